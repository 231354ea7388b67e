"""A member's vote on the lead's next token, from its exact prefix-covering probabilities. Pure tensor maths.

Decoding emits the tokens of one member, the *lead* (the seed member; `lmfuse.ensemble.generate`). Every other member ``k``
votes with its own probability of the text that comes next, read as `lmfuse.ensemble.bytelevel` reads it:
the covers of the text so far whose leading tokens are ``k``'s own reading of it (boundaries ``B_j``, each
with ``k``'s next-token row there) and whose last token ``u`` runs on past the end. The bytes of ``u``
after the end (its *remainder* ``r``) are text ``k`` says comes next, with probability
``P(c_1..c_j) * row_j[u] / P(text)``. No member token is translated into another's, and a member in the
middle of a character, or of one of its own tokens, votes like any other: the pending bytes are part of
its covers.

A cover's mass goes to ``a(r)``, the longest lead token that ``r`` begins with: the lead's unit that the
member's known text spells. Where the lead has longer tokens extending ``r`` (``u`` *stops short* of
them), whether the text goes on into one of them is what ``k`` would say after ``u``: for its likeliest
such token, the reader reads ``u`` ahead (one forward pass, usually the token it reads next anyway) and
the covers continue from that row (a `Cover` with ``ahead`` bytes), so the longer lead tokens get ``k``'s
own probability; the other covers' shares stay on ``a(r)``, and `Vote.cut` reports how much of the vote
that was. A member with the lead's vocabulary therefore votes with exactly its own row.

Shapes: a member's rows are ``[W_k]`` log-probs (its logits width); the vote is ``[W_L]`` probabilities over
the lead's ids (float64, summing to at most 1: covers whose token ends exactly at the end of the text without
being the reading's own boundary, special tokens other than EOS, and a tail of very unlikely covers of a
boundary before the end are not votes).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lmfuse.alignment.prefix import SurfaceIndex
from lmfuse.ensemble.bytelevel import SortedVocab

TAIL_MASS = 0.9999  # the covers of a boundary before the end are taken by mass until this share of it ...
TAIL_TOKENS = 256  # ... or this many, whichever comes first (the rest, very unlikely, is not a vote)


@dataclass
class Lexicon:
    """One member's vocabulary as votes need it. ``text[i]``: id ``i`` has a surface (normal, byte tokens)."""

    sorted: SortedVocab
    index: SurfaceIndex
    surfaces: list[bytes]
    width: int
    eos: int | None
    text: np.ndarray = field(init=False)  # [width] bool
    in_order: list[bytes] = field(init=False)  # the text tokens' surfaces, sorted (bisect finds extensions)

    def __post_init__(self) -> None:
        self.text = np.zeros(self.width, dtype=bool)
        self.text[self.sorted.order.numpy()] = True
        self.in_order = [self.surfaces[i] for i in self.sorted.order.tolist()]

    def extended(self, r: bytes) -> bool:
        """Whether some token's surface starts with ``r`` and is longer."""
        i = bisect.bisect_right(self.in_order, r)
        return i < len(self.in_order) and self.in_order[i].startswith(r)


@dataclass
class LeadMaps:
    """Member ``k`` -> lead ``L``. ``to_lead[u]``: the longest lead token that is a prefix of ``u``'s surface
    (-1: none). ``stops_short[u]``: the lead has a longer token extending ``u``'s surface that ``k`` cannot
    write as one longer token of its own (``k``'s ``" the"`` does not stop short of the lead's ``" these"``
    when ``k`` has ``" these"`` too)."""

    member: Lexicon
    lead: Lexicon
    to_lead: np.ndarray  # [W_k] int64
    stops_short: np.ndarray  # [W_k] bool
    _remainders: dict[bytes, tuple[int, bool]] = field(default_factory=dict)

    @classmethod
    def of(cls, member: Lexicon, lead: Lexicon) -> LeadMaps:
        to_lead = _longest_prefixes(member, lead)
        from_lead = _longest_prefixes(lead, member)  # [W_L]: the longest k-prefix of each lead token
        t = np.flatnonzero(from_lead >= 0)
        u = from_lead[t]
        longer = np.array([len(lead.surfaces[i]) for i in t.tolist()]) > np.array(
            [len(member.surfaces[i]) for i in u.tolist()]) if len(t) else np.zeros(0, dtype=bool)
        stops_short = np.zeros(member.width, dtype=bool)
        stops_short[u[longer]] = True
        return cls(member, lead, to_lead, stops_short)

    def remainder(self, r: bytes) -> tuple[int, bool]:
        """``(a(r), whether the lead has tokens extending r)``, memoised (remainders recur every step)."""
        hit = self._remainders.get(r)
        if hit is None:
            hit = self._remainders[r] = (self.lead.index.longest_prefix(r)[0], self.lead.extended(r))
        return hit


def _longest_prefixes(src: Lexicon, tgt: Lexicon) -> np.ndarray:
    out = np.full(src.width, -1, dtype=np.int64)
    for u in src.sorted.order.tolist():
        out[u] = tgt.index.longest_prefix(src.surfaces[u])[0]
    return out


@dataclass
class Cover:
    """One boundary of the member's reading: ``log_before`` = log P(its tokens before the boundary),
    ``row`` = its next-token log-probs there ``[W_k]``, ``pending`` = the text's bytes after the boundary.

    A boundary *past* the end of the text (a token read ahead) has no pending bytes and ``ahead``: that
    token's bytes beyond the end, which every continuation from it starts with. ``skip``: a token left out
    of this boundary's covers because it was read ahead (its mass is the ahead boundary's)."""

    log_before: float
    row: np.ndarray
    pending: bytes
    ahead: bytes = b""
    skip: int | None = None


@dataclass
class Vote:
    probs: np.ndarray  # [W_L] float64
    cut: float  # share of the vote on a lead token that longer lead tokens extend beyond the member's known text


def vote(maps: LeadMaps, covers: Sequence[Cover]) -> Vote | None:
    """Member ``k``'s probability of each lead token being the next unit of the text; None when no cover
    reaches past the end of the text (the member cannot say anything here)."""
    if not covers:
        return None
    top = max(c.log_before for c in covers)
    out = np.zeros(maps.lead.width, dtype=np.float64)
    total = cut = 0.0
    for c in covers:
        probs = np.exp(c.row.astype(np.float64) + (c.log_before - top))
        if c.skip is not None:
            probs[c.skip] = 0.0
        if c.ahead:
            total += float(probs.sum())
            cut += _vote_ahead(maps, probs, c.ahead, out)
        elif not c.pending:
            total += float(probs.sum())
            cut += _vote_at_end(maps, probs, out)
        else:
            here, cut_here = _vote_pending(maps, probs, c.pending, out)
            total += here
            cut += cut_here
    if total <= 0 or not out.any():
        return None
    return Vote(out / total, cut / total)


def _vote_at_end(maps: LeadMaps, m: np.ndarray, out: np.ndarray) -> float:
    """A boundary at the end of the text: every member token ``u`` is a cover, its remainder its surface."""
    width = maps.member.width
    eos_k, eos_l = maps.member.eos, maps.lead.eos
    if eos_k is not None and eos_l is not None and eos_k < width and eos_l < maps.lead.width:
        out[eos_l] += float(m[eos_k])  # the end of text is the one special outcome both can name
    m = np.where(maps.member.text, m[:width], 0.0)
    hit = maps.to_lead >= 0
    out += np.bincount(maps.to_lead[hit], weights=m[hit], minlength=maps.lead.width)[: maps.lead.width]
    return float(m[hit & maps.stops_short].sum())


def _heaviest(mass: np.ndarray) -> np.ndarray:
    """Positions of ``mass`` by decreasing value, as many as hold ``TAIL_MASS`` of it (at most ``TAIL_TOKENS``)."""
    whole = float(mass.sum())
    if whole <= 0:
        return np.zeros(0, dtype=np.int64)
    cand = np.argpartition(-mass, TAIL_TOKENS)[:TAIL_TOKENS] if len(mass) > TAIL_TOKENS else np.arange(len(mass))
    order = cand[np.argsort(-mass[cand], kind="stable")]
    kept = int((np.cumsum(mass[order]) <= TAIL_MASS * whole).sum()) + 1
    return order[:kept]


def _give(maps: LeadMaps, r: bytes, mass: float, out: np.ndarray) -> float:
    """Give ``mass`` (a continuation known to begin with ``r``) to ``a(r)``; returns it if it was cut short."""
    a, extended = maps.remainder(r)
    if a < 0 or mass <= 0:
        return 0.0
    out[a] += mass
    return mass if extended else 0.0


def _vote_ahead(maps: LeadMaps, m: np.ndarray, ahead: bytes, out: np.ndarray) -> float:
    """A boundary past the end: every continuation is ``ahead`` followed by one of the row's tokens."""
    eos = maps.member.eos
    cut = 0.0
    if eos is not None and eos < len(m):  # the text ends after ``ahead``
        cut += _give(maps, ahead, float(m[eos]), out)
    ids = maps.member.sorted.order.numpy()
    mass = m[ids]
    for j in _heaviest(mass).tolist():
        cut += _give(maps, ahead + maps.member.surfaces[int(ids[j])], float(mass[j]), out)
    return cut


def _vote_pending(maps: LeadMaps, m: np.ndarray, pending: bytes, out: np.ndarray) -> tuple[float, float]:
    """A boundary before the end: the member tokens that start with the pending bytes and run past the end.
    Returns (the mass of every cover of the text from here, the share cut short)."""
    vocab = maps.member.sorted
    lo, hi = vocab.span(pending)
    if lo >= hi:
        return 0.0, 0.0
    ids = vocab.order[lo:hi].numpy()
    mass = m[ids]
    total = float(mass.sum())  # tokens ending exactly at the end cover the text too (not votes: see module doc)
    first_run = vocab.longer(pending)[0] - lo  # those come first in sorted order
    ids, mass = ids[first_run:], mass[first_run:]
    cut = 0.0
    for j in _heaviest(mass).tolist():
        cut += _give(maps, maps.member.surfaces[int(ids[j])][len(pending):], float(mass[j]), out)
    return total, cut
