"""Several scorers seen as one: their systems side by side (e.g. each member of a pack alone)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmfuse.eval.scorer import Demonstration, ExplainsWeights, LearnsFromDemonstrations, Scorer


class CombinedScorer:
    """Concatenates the systems of several scorers; system names must not collide."""

    def __init__(self, scorers: Sequence[Scorer]) -> None:
        names = [s for scorer in scorers for s in scorer.systems()]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"two scorers share the system name(s) {dupes}; give the models distinct names")
        self.scorers = list(scorers)

    def systems(self) -> list[str]:
        return [s for scorer in self.scorers for s in scorer.systems()]

    def provenance(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for scorer in self.scorers:
            describe = getattr(scorer, "provenance", None)
            out.update(describe() if describe else {s: {} for s in scorer.systems()})
        return out

    def loglikelihood(self, context: str, continuations: Sequence[str]) -> dict[str, list[float]]:
        return {k: v for scorer in self.scorers for k, v in scorer.loglikelihood(context, continuations).items()}

    def loglikelihood_many(self, requests: Sequence[tuple[str, Sequence[str]]],
                           answers: Sequence[Sequence[tuple[int, int]]] | None = None) -> list[dict[str, list[float]]]:
        out: list[dict[str, list[float]]] = [{} for _ in requests]
        for scorer in self.scorers:
            for merged, scores in zip(out, scorer.loglikelihood_many(requests, answers), strict=True):
                merged.update(scores)
        return out

    def text_logprob(self, texts: Sequence[str], preceding: Sequence[str] | None = None) -> dict[str, list[float]]:
        return {k: v for scorer in self.scorers for k, v in scorer.text_logprob(texts, preceding).items()}

    def learn(self, demonstrations: Sequence[Demonstration]) -> None:
        for scorer in self.scorers:
            if isinstance(scorer, LearnsFromDemonstrations):
                scorer.learn(demonstrations)

    def last_weights(self) -> dict[str, dict[str, float]]:
        return {k: v for scorer in self.scorers if isinstance(scorer, ExplainsWeights)
                for k, v in scorer.last_weights().items()}

    def batch_weights(self) -> list[dict[str, dict[str, float]]]:
        merged: list[dict[str, dict[str, float]]] = []
        for scorer in self.scorers:
            if isinstance(scorer, ExplainsWeights):
                for i, weights in enumerate(scorer.batch_weights()):
                    if i == len(merged):
                        merged.append({})
                    merged[i].update(weights)
        return merged
