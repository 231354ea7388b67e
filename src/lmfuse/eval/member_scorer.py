"""`MemberScorer`: the `Scorer` protocol for one member alone.

**Tokenization boundary.** ``context + continuation`` is tokenized *together*, as the model would
read the whole text, and split where the context's text ends, not counting spaces that end it
(``"A: "``; a final newline stays in the context): the continuation's tokens are those that end after
that offset. A token straddling the boundary (BPE's ``" Yes"`` after ``"A:"``, or any other merge
across it) counts as continuation, so the scored tokens always cover the whole
continuation and the model never sees a tokenization it would not produce for the full text.
Scoring ``context`` and ``continuation`` separately would instead split words that the tokenizer
joins.

**Prefix reuse.** The options of one example share their first tokens (the prefix token and the
context). That common prefix runs once; only each option's remaining tokens run, as one batch
(`Member.score_after_prefix`).

**Long contexts.** When prefix token + context + continuation exceed the member's context length,
the context is left-truncated (its oldest tokens are dropped; the prefix token stays first). A
continuation that alone does not fit is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmfuse.errors import InputError
from lmfuse.models.member import Member

HORIZONTAL_SPACE = " \t"
"""Characters that move from the end of a context to its continuations (not newlines: see the module doc)."""


class MemberScorer:
    """Scores text with one member. ``window`` caps the rolling window of ``text_logprob``
    (tokens of context per window) below the member's context length, for CPU speed."""

    def __init__(self, member: Member, window: int | None = 2048) -> None:
        self.member = member
        self.window = window

    def systems(self) -> list[str]:
        return [self.member.name]

    def provenance(self) -> dict[str, Any]:
        m = self.member
        return {m.name: {"source": m.source, "dtype": str(m.dtype).removeprefix("torch."),
                         "context_length": m.context_length, **m.info}}

    def text_logprob(self, texts: Sequence[str], preceding: Sequence[str] | None = None) -> dict[str, list[float]]:
        out = []
        for text in texts:
            ids = self.member.encode(text).ids
            if not ids:
                raise InputError(f"member {self.member.name!r}: text {text[:40]!r} gives no tokens")
            out.append(float(self.member.score_tokens(ids, window=self.window).double().sum()))
        return {self.member.name: out}

    def loglikelihood(self, context: str, continuations: Sequence[str]) -> dict[str, list[float]]:
        seqs, starts = zip(*(self.split(context, c) for c in continuations), strict=True)
        return {self.member.name: self.member.score_after_prefix(list(seqs), list(starts))}

    def split(self, context: str, continuation: str) -> tuple[list[int], int]:
        """``(ids, start)``: prefix token + joint tokens of the text, and the index in ``ids`` of the
        first continuation token; left-truncated to the member's context length."""
        if not continuation:
            raise InputError(f"empty continuation after context {context[-40:]!r}")
        enc = self.member.encode(context + continuation)
        # Spaces ending the context ("A: ") belong to the continuation, as in `PackScorer`, so each member
        # alone and that member's column in a pack evaluation score the same tokens: a space that a
        # tokenizer reads as a token of its own (Qwen's, before a digit) is scored with the option.
        boundary = len(context.rstrip(HORIZONTAL_SPACE))
        first = next((j for j, (_, end) in enumerate(enc.offsets) if end > boundary), None)
        if first is None:
            raise InputError(
                f"member {self.member.name!r}: continuation {continuation!r} gives no tokens of its own"
            )
        ids = [self.member.prefix_token_id, *enc.ids]
        start = first + 1
        excess = len(ids) - self.member.context_length
        if excess > 0:
            if excess > start - 1:
                raise InputError(
                    f"member {self.member.name!r}: continuation of {len(ids) - start} tokens does not fit "
                    f"its context of {self.member.context_length}"
                )
            ids = [ids[0], *ids[1 + excess :]]
            start -= excess
        return ids, start
