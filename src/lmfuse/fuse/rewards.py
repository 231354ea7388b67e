"""ProFuser's inference-mode judges: registered rewards and the vote that picks one response per prompt.

A reward is built from its recipe entry (``RewardSpec``, defined here beside its registry) by a registered factory and scores a batch:
``reward(prompts, responses, references) -> float64 [N]`` (higher is better).

==================  ===================================================================================
``exact-match``     1.0 when the response's final answer equals the reference's, else 0.0. The final
                    answer is the text after GSM8K's ``#### `` marker, else the last number; numbers are
                    compared as decimals (``$1,000.00`` == ``1000``)
``chrf``            sacrebleu's sentence chrF of the response against the reference, in [0, 1]
``reward-model``    any HF ``AutoModelForSequenceClassification`` directory (``model:``): its logit for
                    (prompt, response) when it has one label, else the log-probability of its last label;
                    the pair is rendered with the reward model's chat template when its tokenizer has one
==================  ===================================================================================

**Vote** (registry ``VOTES``: ``scores [R, C] -> Vote``; the paper's rule is unknown, these are our
reconstruction). ``majority`` (the default): every reward gives one vote to its best response — shared
equally when several responses tie for its best score (an exact-match reward often has several correct
answers). The most votes win; a tie is broken by the highest mean z-normalised score (each reward's
scores standardised over the candidates; a reward that scores every candidate alike contributes 0), and
a remaining tie by the fixed candidate order: the target first (when it is a candidate), then the
sources in recipe order — the same order MinCE breaks ties in. Alternatives: ``borda`` (each reward
gives C-1 points to its best response down to 0 for its worst, tied responses sharing the points of
their places; then the same tie-breaks) and ``mean-z`` (the highest mean z-score, then the order).
An unscored (NaN) response never wins while another response has a score.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field, model_validator

from lmfuse.config import OneOf
from lmfuse.errors import InputError
from lmfuse.fuse.config import section
from lmfuse.registry import Registry

Reward = Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray]
RewardFactory = Callable[["RewardSpec"], Reward]
REWARDS: Registry[RewardFactory] = Registry("reward")


@section
class RewardSpec:
    """One voter of ProFuser's inference mode (an entry of the recipe's ``rewards``; a plain string is the name)."""

    name: Annotated[str, OneOf(REWARDS)]
    """``exact-match`` (final answer), ``chrf`` (sacrebleu), ``reward-model`` (a sequence classifier)."""
    model: str = ""
    """``reward-model``: an HF directory holding an ``AutoModelForSequenceClassification`` and its tokenizer."""
    batch_size: int = Field(default=8, ge=1)
    max_length: int = Field(default=1024, ge=1)
    """``reward-model``: (prompt, response) pairs are truncated to this many tokens."""

    @model_validator(mode="after")
    def _check(self) -> RewardSpec:
        if self.name == "reward-model" and not self.model:
            raise ValueError(NEEDS_MODEL)
        return self


NEEDS_MODEL = "reward 'reward-model' needs `model:`, an HF directory of a sequence-classification model"

_NUMBER = re.compile(r"[-+]?\$?\d[\d,]*(?:\.\d+)?")


def _normalise_number(text: str) -> str | None:
    try:
        value = Decimal(text.replace("$", "").replace(",", "").lstrip("+"))
    except InvalidOperation:
        return None
    return format(value.normalize(), "f")


def final_answer(text: str) -> str | None:
    """A response's final answer: the number after ``####`` (else that text), else the last number."""
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        match = _NUMBER.search(tail)
        if match:
            return _normalise_number(match.group())
        return tail.lower() or None
    numbers = _NUMBER.findall(text)
    return _normalise_number(numbers[-1]) if numbers else None


@REWARDS.register("exact-match")
def exact_match(spec: RewardSpec) -> Reward:
    def score(prompts: Sequence[str], responses: Sequence[str], references: Sequence[str]) -> np.ndarray:
        out = []
        for response, reference in zip(responses, references, strict=True):
            want = final_answer(reference)
            out.append(float(want is not None and final_answer(response) == want))
        return np.asarray(out, dtype=np.float64)

    return score


@REWARDS.register("chrf")
def chrf(spec: RewardSpec) -> Reward:
    from sacrebleu.metrics import CHRF

    metric = CHRF()

    def score(prompts: Sequence[str], responses: Sequence[str], references: Sequence[str]) -> np.ndarray:
        return np.asarray([metric.sentence_score(r, [ref]).score / 100.0
                           for r, ref in zip(responses, references, strict=True)], dtype=np.float64)

    return score


@REWARDS.register("reward-model")
def reward_model(spec: RewardSpec) -> Reward:
    from lmfuse.models.reward import RewardModel

    judge = RewardModel.load(_reward_model_dir(spec))

    def score(prompts: Sequence[str], responses: Sequence[str], references: Sequence[str]) -> np.ndarray:
        return judge.score(prompts, responses, spec.batch_size, spec.max_length)

    return score


def _reward_model_dir(spec: RewardSpec) -> Path:
    path = Path(spec.model).expanduser()
    if not (path / "config.json").is_file():
        raise InputError(f"reward model {spec.model!r} is not an HF model directory (no config.json)")
    return path


def build_rewards(specs: Sequence[RewardSpec]) -> list[Reward]:
    return [REWARDS.get(spec.name)(spec) for spec in specs]


@dataclass(frozen=True)
class Vote:
    """The outcome for one prompt: ``winner`` (candidate index), ``votes`` ``[C]`` (the rule's points),
    ``mean_z`` ``[C]`` (mean z-normalised score, the first tie-break)."""

    winner: int
    votes: np.ndarray
    mean_z: np.ndarray


VoteFn = Callable[[np.ndarray], Vote]
VOTES: Registry[VoteFn] = Registry("vote rule")


def _prepare(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(scores with NaN as -inf [R, C], mean z-score [C])``; an unscored candidate's mean z is -inf."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] == 0:
        raise InputError(f"vote needs scores of shape [rewards, candidates], got {s.shape}")
    s = np.where(np.isnan(s), -np.inf, s)
    finite = np.where(np.isfinite(s), s, np.nan)
    with np.errstate(all="ignore"):  # a reward with no finite score at all: z = 0 for everyone
        mean = np.nan_to_num(np.nanmean(finite, axis=1, keepdims=True)) if np.isfinite(s).any() else 0.0
        std = np.nan_to_num(np.nanstd(finite, axis=1, keepdims=True))
        z = np.where(std > 0, (finite - mean) / np.where(std > 0, std, 1.0), 0.0)
    z = np.where(np.isneginf(s), -np.inf, np.nan_to_num(z))
    return s, z.mean(axis=0)


def _decide(points: np.ndarray, mean_z: np.ndarray) -> int:
    # Rounded before comparing: shared points (1/3 + 1/3 vs 2/3) must tie exactly; then z, then order.
    key = [(-round(float(points[c]), 9), -round(float(mean_z[c]), 9), c) for c in range(len(points))]
    return min(key)[2]


@VOTES.register("majority")
def vote(scores: np.ndarray) -> Vote:
    """Pick one of C candidates from R rewards' ``scores [R, C]`` (higher is better; see the module doc)."""
    s, mean_z = _prepare(scores)
    best = s == s.max(axis=1, keepdims=True)
    votes = (best / best.sum(axis=1, keepdims=True)).sum(axis=0)
    return Vote(_decide(votes, mean_z), votes, mean_z)


@VOTES.register("borda")
def borda(scores: np.ndarray) -> Vote:
    """Borda count: per reward, C-1 points for the best down to 0 for the worst (ties share their places)."""
    s, mean_z = _prepare(scores)
    below = (s[:, None, :] < s[:, :, None]).sum(axis=2)  # [R, C] candidates scored below c
    tied = (s[:, None, :] == s[:, :, None]).sum(axis=2) - 1  # [R, C] others scored like c
    points = (below + tied / 2.0).sum(axis=0)
    if np.isneginf(s).all(axis=0).any():  # an unscored candidate gets no points at all
        points = np.where(np.isneginf(s).all(axis=0), -np.inf, points)
    return Vote(_decide(points, mean_z), points, mean_z)


@VOTES.register("mean-z")
def mean_z_vote(scores: np.ndarray) -> Vote:
    """The highest mean z-normalised score over the rewards, then the fixed order."""
    _, mean_z = _prepare(scores)
    return Vote(_decide(mean_z, mean_z), mean_z, mean_z)
