"""Exact next-byte distributions of a token-level member, by prefix covering. Pure tensor maths.

A member that reads text in its own tokens defines a distribution over byte strings. The probability
that the text *starts with* the bytes ``x[:i]`` is the total probability of the token sequences that
**cover** it: sequences whose tokens before the last one spell a proper prefix of ``x[:i]`` and whose
last token runs on past (or to) byte ``i`` (Phan et al. 2024, *Exact Byte-Level Probabilities from
Tokenized Language Models*; Vieira et al. 2024, *From Language Models over Tokens to Language Models over
Characters*). The ratio ``P(x[:i+1]) / P(x[:i])`` is the member's probability of the next byte.

We enumerate the covers whose leading tokens are the member's own (canonical) tokenization of the text:
with ``c_1 .. c_n`` its tokens and ``B_k`` the byte where ``c_k`` ends (``B_0`` the text's start),

    P(x[:i]) = sum over k with B_k < i of  P(c_1 .. c_k) * Q_k(x[B_k:i])

where ``Q_k(r)`` is the total probability, under the member's next-token distribution after ``c_1..c_k``
(its row ``k``), of the tokens whose surface starts with ``r``. Every row is the one the member's
ordinary forward pass over its own tokens gives: no extra passes. A trained model gives almost no mass
to token sequences that leave its canonical tokenization and come back to it, which is why the covers
that leave it earlier are not enumerated (Phan et al.'s "valid covering encodings").

Each next-byte distribution has **257 outcomes**: the 256 bytes, and ``OTHER``: the prefix's covers that
do not go on with a byte we can attribute without another forward pass — a token that ends exactly
here where the member's own tokenization does not (``"py"`` before ``"thon"``: what follows it is
``"torch"`` more often than ``"thon"``), and the end of text (special tokens) at a boundary. Its mass is
what those covers hold; nothing is renormalised, so the text's own byte gets exactly
``P(x[:i+1]) / P(x[:i])`` and, over a whole text, the product of the next-byte probabilities is the
member's probability of the text as a byte prefix: its own token log-likelihood plus the mass of the other
covers (tokens that run on past the text's end). Every distribution sums to 1, also inside a multi-byte
UTF-8 character, so members vote on every byte. Fusing members as byte-level models needs no shared
vocabulary: one-hot weights give that member's own distribution, and the product and mixture pools obey
their bounds over the 257 outcomes.

Tokens run in lexicographic order of their surfaces, so the tokens starting with ``r`` are one
contiguous range and ``Q_k(r)`` is a difference of a cumulative sum (`SortedVocab`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lmfuse.alignment.tokens import BYTE, NORMAL, TokenTable

N_BYTES = 256
OTHER = 256  # the 257th outcome: covers that go on through a boundary the member's tokenization lacks, or end
N_OUTCOMES = 257
ROW_CHUNK = 32  # rows whose cumulative sums are held at once (float64 [32, V])
LOG_FLOOR = -69.0  # ~1e-30: a byte no cover reaches is "impossible", but never -inf (product vetoes)


@dataclass(frozen=True)
class SortedVocab:
    """A member's text tokens (normal and byte tokens, ids below its logits width) in lexicographic
    order of their surface bytes.

    ``order[j]``: the id at sorted position ``j``. ``columns[d, j]``: 1 + byte ``d`` of that token's
    surface, 0 past its end (one contiguous row per depth); sorted lexicographically with "ended" before
    every byte, so the tokens that share a prefix of length ``d`` and continue with byte ``b`` form one
    contiguous block ordered by ``columns[d]``.
    """

    order: torch.Tensor  # [V'] int64
    columns: np.ndarray  # [L + 1, V'] uint16
    root: np.ndarray  # [257] the depth-0 split of the whole vocabulary (every boundary starts there)

    @classmethod
    def of(cls, table: TokenTable, width: int) -> SortedVocab:
        ids = [i for i in range(min(table.size, width))
               if table.kind[i] in (NORMAL, BYTE) and table.surface[i]]
        ids.sort(key=lambda i: table.surface[i])
        longest = max((len(table.surface[i]) for i in ids), default=1)
        columns = np.zeros((longest + 1, len(ids)), dtype=np.uint16)  # one spare depth: "ended"
        for j, i in enumerate(ids):
            s = table.surface[i]
            columns[: len(s), j] = np.frombuffer(s, dtype=np.uint8).astype(np.uint16) + 1
        root = np.searchsorted(columns[0], np.arange(1, N_BYTES + 2), side="left")
        return cls(torch.as_tensor(ids, dtype=torch.long), columns, root)

    @property
    def depth(self) -> int:
        return self.columns.shape[0] - 1

    def reaches(self, text: bytes, start: int, end: int) -> bool:
        """Whether some token's surface starts with ``text[start:end]``: only then can a boundary at
        ``start`` still cover byte ``end``."""
        lo, hi = self.span(text[start:end])
        return lo < hi

    def span(self, prefix: bytes) -> tuple[int, int]:
        """Sorted positions ``[lo, hi)`` of the tokens whose surface starts with ``prefix`` (those equal to
        it come first: "ended" sorts before every byte)."""
        lo, hi = 0, len(self.order)
        for d, byte in enumerate(prefix):
            split = self.children(lo, hi, d)
            lo, hi = int(split[byte]), int(split[byte + 1])
            if lo >= hi:
                return lo, lo
        return lo, hi

    def longer(self, prefix: bytes) -> tuple[int, int]:
        """Sorted positions ``[lo, hi)`` of the tokens whose surface starts with ``prefix`` and is longer."""
        lo, hi = self.span(prefix)
        if lo < hi and prefix:
            lo = int(self.children(lo, hi, len(prefix))[0])
        return lo, hi

    def children(self, lo: int, hi: int, d: int) -> np.ndarray:
        """``[257]`` sorted positions splitting ``[lo, hi)`` (tokens sharing ``d`` bytes) by byte ``d``:
        byte ``b``'s block is ``[out[b], out[b+1])``; ``[lo, out[0])`` is the tokens that end at ``d``."""
        if d == 0:
            return self.root
        if d >= self.columns.shape[0]:
            return np.full(N_BYTES + 1, hi)
        return lo + np.searchsorted(self.columns[d, lo:hi], np.arange(1, N_BYTES + 2), side="left")


@dataclass
class ByteReading:
    """One member's next-byte log-distributions over a span of a text.

    ``log_probs[i]``: ``[257]`` log P(next byte | text bytes before ``span[0] + i``) over the 256 bytes and
    ``OTHER``; it sums to 1. ``present[i]``: whether the member can speak at that byte (its own tokens
    spell the text there).
    """

    log_probs: torch.Tensor  # [N, 257] float32
    present: torch.Tensor  # [N] bool

    @property
    def other(self) -> torch.Tensor:
        """``[N]`` the mass of ``OTHER`` at each byte."""
        return self.log_probs[:, OTHER].exp()


def token_byte_spans(text: bytes, surfaces: Sequence[bytes], first: int) -> tuple[list[int], list[bool]]:
    """Byte ends ``B_1..B_n`` of tokens laid end to end from byte ``first``, and whether each token's
    surface is the text there (False for lossy tokenizers: WordPiece's invented spaces, normalisers)."""
    ends, ok = [], []
    pos = first
    for s in surfaces:
        ok.append(text[pos : pos + len(s)] == s)
        pos += len(s)
        ends.append(pos)
    return ends, ok


def next_byte_logprobs(
    vocab: SortedVocab,
    rows: torch.Tensor,
    ids: Sequence[int],
    surfaces: Sequence[bytes],
    text: bytes,
    first: int,
    span: tuple[int, int],
    boundary_at_end: bool = True,
) -> ByteReading:
    """The member's next-byte distributions at bytes ``span[0] .. span[1]-1`` of ``text``.

    ``boundary_at_end``: the scored text ends at ``span[1]`` with a token boundary, as when the member
    scores it alone (a chunk, a continuation): the last byte counts only the covers whose last token ends
    exactly there, and the mass of the tokens that run on past the end goes to ``OTHER``.

    ``rows[k]`` (``[n, V]`` log-probs) is the member's distribution of its token ``ids[k]`` given the
    tokens before it; the tokens' ``surfaces`` spell ``text`` from byte ``first`` on (checked; where they do
    not, the member is absent). Row ``k`` sits at boundary ``B_k`` (``B_0 = first``).
    """
    lo_byte, hi_byte = span
    n_out = hi_byte - lo_byte
    ends, ok = token_byte_spans(text, surfaces, first)
    starts = [first, *ends[:-1]]
    # Cumulative log-prob of the canonical tokens before each boundary: P(c_1 .. c_k), float64.
    token_lp = rows.gather(-1, torch.as_tensor(list(ids), dtype=torch.long)[:, None])[:, 0].double()
    before = torch.cat([torch.zeros(1, dtype=torch.float64), token_lp.cumsum(0)])
    # A boundary only reaches bytes within the longest token; tokens that are not the text break the chain.
    broken = next((k for k, good in enumerate(ok) if not good), len(ok))
    mass = torch.full((n_out, N_OUTCOMES), -math.inf, dtype=torch.float64)  # log P(x[:i] + outcome)
    ending = torch.full((), -math.inf, dtype=torch.float64)  # log P(x[:span[1]], a boundary right after)
    present = torch.zeros(n_out, dtype=torch.bool)
    for k_pos, (a, b) in enumerate(zip(starts, ends, strict=True)):
        if k_pos <= broken and b > lo_byte and a < hi_byte and ok[k_pos]:
            present[max(a, lo_byte) - lo_byte : min(b, hi_byte) - lo_byte] = True
    # Only boundaries whose tokens can still spell the text up to the span contribute (a text-only walk,
    # so a continuation's long context costs no row of its own).
    useful = [k for k in range(min(broken + 1, len(starts)))
              if starts[k] < hi_byte and starts[k] + vocab.depth >= lo_byte and vocab.reaches(text, starts[k], lo_byte)]
    for c0 in range(0, len(useful), ROW_CHUNK):
        chunk = useful[c0 : c0 + ROW_CHUNK]
        probs = rows[chunk].index_select(1, vocab.order).to(torch.float64).exp_()  # [c, V'] in sorted order
        cum = torch.zeros(len(chunk), probs.shape[1] + 1, dtype=torch.float64)  # cum[:, j] = mass before j
        torch.cumsum(probs, 1, out=cum[:, 1:])
        for r, k in enumerate(chunk):
            canonical = (ends[k], float(token_lp[k].exp()))
            ending = torch.logaddexp(ending, _walk(vocab, cum[r], float(before[k]), canonical, text, starts[k],
                                                   (lo_byte, hi_byte), mass))
    if boundary_at_end and n_out:
        last, byte = n_out - 1, text[hi_byte - 1]
        through = mass[last, byte]  # every cover of the last byte; only those ending there are the event
        run_on = through + torch.log1p(-torch.exp(ending - through).clamp(max=1.0)) if bool(torch.isfinite(
            through)) else through
        mass[last, OTHER] = torch.logaddexp(mass[last, OTHER], run_on)
        mass[last, byte] = ending
    total = torch.logsumexp(mass, dim=-1, keepdim=True)  # log P(x[:i])
    log_probs = torch.where(present[:, None], (mass - total).clamp_min(LOG_FLOOR), torch.zeros(()))
    return ByteReading(log_probs.float(), present & torch.isfinite(total[:, 0]))


def _walk(vocab: SortedVocab, cum: torch.Tensor, log_before: float, canonical: tuple[int, float], text: bytes,
          start: int, span: tuple[int, int], mass: torch.Tensor) -> torch.Tensor:
    """Add boundary ``start``'s covers to the outcome masses of the bytes it reaches.

    At depth ``d`` (byte ``start + d``) the range holds the tokens whose surface starts with
    ``text[start : start + d]``; split by their byte ``d``, the blocks' masses times ``P(c_1..c_k)`` are
    this boundary's share of the next-byte masses there. Tokens that end exactly at depth ``d > 0`` go to
    ``OTHER``, except the member's own next token (``canonical``: its end byte and probability), which the
    next boundary continues; at depth 0 the row's mass outside the text tokens (end of text, specials,
    padded ids) goes to ``OTHER``. The walk follows the text's own byte until no token continues it.
    Returns the log-mass of this boundary's covers whose last token ends exactly at ``span[1]``."""
    lo_byte, hi_byte = span
    lo, hi = 0, len(vocab.order)
    d = 0
    while lo < hi and start + d < hi_byte:
        cuts = vocab.children(lo, hi, d)
        i = start + d
        if i >= lo_byte:
            at = cum[cuts]  # [257]
            outcome = torch.empty(N_OUTCOMES, dtype=torch.float64)
            outcome[:N_BYTES] = (at[1:] - at[:-1]).clamp_min(0.0)
            if d == 0:
                outcome[OTHER] = max(0.0, 1.0 - float(cum[-1]))
            else:
                outcome[OTHER] = max(0.0, float(at[0] - cum[lo]) - (canonical[1] if i == canonical[0] else 0.0))
            outcome = outcome.log() + log_before
            mass[i - lo_byte] = torch.logaddexp(mass[i - lo_byte], outcome)
        byte = text[i]
        lo, hi = int(cuts[byte]), int(cuts[byte + 1])
        d += 1
    if lo < hi and start + d == hi_byte and d > 0:  # the tokens spelling exactly text[start:span end]
        exact = float(cum[vocab.children(lo, hi, d)[0]] - cum[lo])
        if exact > 0:
            return torch.tensor(math.log(exact) + log_before, dtype=torch.float64)
    return torch.tensor(-math.inf, dtype=torch.float64)
