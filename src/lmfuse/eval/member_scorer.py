"""`MemberScorer`: the `Scorer` protocol for one member alone.

**Tokenization boundary.** ``context + continuation`` is tokenized *together*, as the model would
read the whole text, and split where the context's text ends, not counting spaces that end it
(``"A: "``; a final newline stays in the context): the continuation's tokens are those that end after
that offset. A token straddling the boundary (BPE's ``" Yes"`` after ``"A:"``, or any other merge
across it) counts as continuation, so the scored tokens always cover the whole
continuation and the model never sees a tokenization it would not produce for the full text.
Scoring ``context`` and ``continuation`` separately would instead split words that the tokenizer
joins.

**Prefix reuse and batches.** The options of one example share their first tokens (the prefix token and
the context). That common prefix runs once (only its last position through the LM head); each option's
remaining tokens then run after it without growing its cache. The prefixes of a batch of examples run as
one forward pass, and so do all their options (`Member.feed`).

**Long contexts.** When prefix token + context + continuation exceed the member's context length,
the context is left-truncated (its oldest tokens are dropped; the prefix token stays first). A
continuation that alone does not fit is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lmfuse.errors import InputError
from lmfuse.models.member import Feed, Member, new_cache

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
        return self.loglikelihood_many([(context, continuations)])[0]

    def loglikelihood_many(self, requests: Sequence[tuple[str, Sequence[str]]],
                           answers: Sequence[Sequence[tuple[int, int]]] | None = None) -> list[dict[str, list[float]]]:
        """`loglikelihood` of several examples, their forward passes batched together (a member alone
        weighs nothing: ``answers`` are not used)."""
        examples = []
        for context, continuations in requests:
            if not continuations:
                raise InputError(f"no continuations to score after context {context[-40:]!r}")
            seqs, starts = zip(*(self.split(context, c) for c in continuations), strict=True)
            examples.append((list(seqs), list(starts)))
        return [{self.member.name: scores} for scores in self._score_options(examples)]

    def _score_options(self, examples: list[tuple[list[list[int]], list[int]]]) -> list[list[float]]:
        """Sum of ``log p(seq[j] | seq[:j])`` for ``j >= start``, per option ``seq`` of each example.

        An example's common prefix ``seqs[*][:m]`` (``m <= min(starts)``, so context only) is read once;
        its last row predicts every option's token ``m``. Each option's tokens ``seq[m:-1]`` are then read
        after that cache (position i predicts i+1), all options of all examples in one batched pass."""
        member = self.member
        prefixes = [_common_prefix_len(seqs, min(starts)) for seqs, starts in examples]
        caches = [new_cache() for _ in examples]
        firsts = member.feed([Feed(cache, seqs[0][:m], last_only=True)
                              for cache, (seqs, _), m in zip(caches, examples, prefixes, strict=True)])
        reads = [(e, o) for e, (seqs, _) in enumerate(examples) for o, seq in enumerate(seqs)
                 if len(seq) - prefixes[e] > 1]
        rows = dict(zip(reads, member.feed([Feed(caches[e], examples[e][0][o][prefixes[e]:-1], extend=False)
                                            for e, o in reads]), strict=True))
        out = []
        for e, (seqs, starts) in enumerate(examples):
            m, scores = prefixes[e], []
            for o, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
                # Rows predicting seq[m:]: the prefix's last row, then the option's own rows.
                lp = torch.cat([firsts[e], rows[(e, o)]]) if (e, o) in rows else firsts[e]
                targets = torch.as_tensor(seq[m:], dtype=torch.long)
                scores.append(float(lp.gather(-1, targets[:, None])[:, 0][start - m :].double().sum()))
            out.append(scores)
        return out

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


def _common_prefix_len(seqs: list[list[int]], cap: int) -> int:
    m = 0
    while m < cap and all(s[m] == seqs[0][m] for s in seqs):
        m += 1
    return m  # >= 1: every sequence starts with the prefix token, kept by left-truncation
