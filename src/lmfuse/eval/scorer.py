"""The one interface evaluation needs from anything it evaluates: a member alone or a whole pack.

A scorer scores several *systems* at once from the same forward passes: a single member is one
system; a pack is its members alone plus each weighting strategy, so an evaluation of six strategies
costs one forward pass per member, not six.

All numbers are natural-log probabilities summed over the scored text (not normalised): the caller
normalises by UTF-8 bytes, which is comparable across tokenizers (per-token NLL is not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class Scorer(Protocol):
    def systems(self) -> list[str]:
        """Names of the systems this scorer returns, in a stable order."""
        ...

    def loglikelihood(self, context: str, continuations: Sequence[str]) -> dict[str, list[float]]:
        """``log p(continuation | context)`` for each continuation, per system.

        The continuations of one multiple-choice example share the context: implementations compute
        the context once (KV cache or one pass) and reuse it for every option.
        """
        ...

    def loglikelihood_many(self, requests: Sequence[tuple[str, Sequence[str]]],
                           answers: Sequence[Sequence[tuple[int, int]]] | None = None) -> list[dict[str, list[float]]]:
        """`loglikelihood` of several ``(context, continuations)`` examples, their forward passes batched.

        ``answers``: per example, the character spans in its context of the solved demonstrations' answers
        (k-shot). A scorer that fits weights on labelled demonstrations (``demo-fit``) fits them there;
        others ignore it."""
        ...

    def text_logprob(self, texts: Sequence[str], preceding: Sequence[str] | None = None) -> dict[str, list[float]]:
        """Total ``log p(text)`` of each whole text (long texts in rolling windows), per system.

        ``preceding``: the text before each one. A scorer that fits weights (a pack) fits them there instead
        of on the text itself, so the score is causal (what generation gets); others ignore it."""
        ...


@runtime_checkable
class ExplainsWeights(Protocol):
    """A scorer whose systems weigh members (a pack) says, after each call, how it weighed them: the
    runner records the weights per example, and the report shows them per task."""

    def last_weights(self) -> dict[str, dict[str, float]]:
        """``{system: {member: weight}}`` for each weighted system, as fitted in the last call
        (``loglikelihood``, or the last text of ``text_logprob``); empty when nothing is weighted."""
        ...

    def batch_weights(self) -> list[dict[str, dict[str, float]]]:
        """`last_weights` of each example of the last ``loglikelihood_many`` call, in order."""
        ...


@dataclass(frozen=True)
class Demonstration:
    """A solved example of a task: ``context`` (its question, as a prompt shows it), its ``options``, the
    indices of the ``correct`` ones (at least one)."""

    context: str
    options: tuple[str, ...]
    correct: tuple[int, ...]

    @property
    def answer(self) -> str:
        """The (first) correct option: what a k-shot prompt writes after the question."""
        return self.options[self.correct[0]]


@runtime_checkable
class LearnsFromDemonstrations(Protocol):
    """A scorer with strategies fitted once per task on labelled examples (a pack's ``demo-fit-task``,
    ``choice-fit-task``)."""

    def learn(self, demonstrations: Sequence[Demonstration]) -> None:
        """Fit the task-level weights on solved examples of the task about to be scored, each option read
        after its question as an option is. The runner calls it before every multiple-choice task (with
        none when it has no demonstrations)."""
        ...
