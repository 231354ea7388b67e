"""`Reader`: one member's reading of the text that decoding writes, in its own tokens, with its KV cache.

The lead (the member whose tokens decoding emits) appends the chosen ids; every other member reads the
text the lead has written so far in its own likeliest pieces and returns its *covers* of the end of the
text (`lmfuse.ensemble.votes.Cover`): the boundaries of its reading with its next-token row there.

A reader never runs a model itself. Its methods are generators that yield a `Feed` (tokens to append to
its cache) and receive the rows the member computed for them, so the decoder can put the feeds of many
prompts through one batched forward pass per member, and run the members at the same time
(`lmfuse.ensemble.generate`)::

    covers = yield from reader.read(text)   # drive it: rows = member.feed([feed])[0]; gen.send(rows)

Invariants (checked after every step by ``tests/ensemble/test_reader.py``):

1. the cache holds exactly ``ids`` (its length is ``len(ids)``), and ``ids`` starts with ``head``
   (prefix token + the prompt's ids);
2. ``rows_at[p]`` is the member's row after ``ids[:p]`` (it predicts ``ids[p]``), kept only for boundaries
   at or after ``head`` and within the last two tokens' reach of the end; ``row`` is ``rows_at[len(ids)]``;
3. ``log_before[j]`` is ``log P(ids[len(head) : len(head) + j])`` and ``ends[j]`` the byte offset in the
   written text where those ``j`` generated tokens end (``len(log_before) == len(ends) == len(ids) -
   len(head) + 1``);
4. the generated ids spell the written text from its start, except a last token read ahead, which runs
   past its end;
5. ``dead`` holds byte offsets from which no token of the member spells the text on: the text only grows,
   so they stay dead.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lmfuse.ensemble.votes import Cover, LeadMaps, Lexicon
from lmfuse.models.member import Feed, Member, crop_to

# What a reader's steps yield (a feed for its member) and receive (the feed's rows ``[len(ids), V]``).
Steps = Generator[Feed, torch.Tensor, Any]

LOG_ENDING_SHARE = math.log(0.1)  # a token ending at the end is read unless it has < 10% of a running one's mass


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class Reader:
    """One member's view of the text: the ids in its KV cache, and the rows at its recent boundaries."""

    member: Member
    head: list[int]  # prefix token + (truncated) prompt ids
    ids: list[int]
    cache: Any
    row: torch.Tensor  # [W] log-probs of the next token after ``ids``
    lexicon: Lexicon
    maps: LeadMaps | None = None  # None: it appends the lead's ids (the lead, or the lead's vocabulary)
    rows_at: dict[int, torch.Tensor] = field(default_factory=dict)  # position p -> row predicting ids[p]
    log_before: list[float] = field(default_factory=list)  # p - len(head) -> log P(ids[len(head):p])
    ends: list[int] = field(default_factory=list)  # p - len(head) -> byte offset of boundary p in the text
    dead: set[int] = field(default_factory=set)  # byte offsets from which no token reaches the end any more

    def __post_init__(self) -> None:
        self.rows_at[len(self.ids)] = self.row
        self.log_before, self.ends = [0.0], [0]

    def append(self, token: int) -> Steps:
        """The lead's way (and its vocabulary's): append the chosen id."""
        rows = yield Feed(self.cache, [token])
        self.row = rows[-1]
        self.ids.append(token)

    def read(self, text: bytes) -> Steps:
        """Bring the cache to the member's reading of ``text`` (the lead's bytes so far); returns its covers
        of the end (None: no token of its own spells the text on from its boundaries).

        The reading keeps the member's tokens that still spell the text, except the last, and reads on
        from there in its likeliest pieces (`_best_from`): the tokenization of the rest of the text with the
        most mass among those its greedy choices reach, ending at the end of the text or in a token that
        runs past it (the member is in the middle of one of its own tokens, ``" tha"`` of ``" that"``: that
        token is read ahead). At the end, when its likeliest next token *stops short* of longer lead
        tokens, it reads that token ahead too: whether the text goes on into them is what it says after it.
        """
        base = len(self.head)
        path = self.ids[base : base + max(self._agreeing(text) - 1, 0)]  # the last token is decided again: "The" may be "They"
        yield from self._feed(self.head + path, exact=False)
        best = yield from self._best_from(text, path)
        if best is None:
            return None
        _, tokens, ahead = best
        path = path + tokens
        if ahead is None:
            yield from self._feed(self.head + path, exact=False)
            ahead = self._stops_short(text, len(path))
        yield from self._feed(self.head + path + ([ahead] if ahead is not None else []))
        return self._covers(text, len(path), ahead)

    def _best_from(self, text: bytes, path: list[int]) -> Steps:
        """From the boundary after ``path`` (fed): ``(log mass, tokens, ahead)`` of the member's likeliest
        reading of the rest of the text: its tokens up to the end, or up to a token that runs past it.
        Greedy with one step of lookahead: a token ending inside the text is taken only if, read on from
        it, it keeps more mass than the best token reaching the end from here."""
        j = len(path)
        row = self.rows_at[len(self.head) + j]
        rest = text[self.ends[j]:]
        if not rest:
            return 0.0, [], None
        index = self.lexicon.index
        inside = [t for t in (index.home.get(rest[:n]) for n in range(1, min(len(rest), index.longest) + 1))
                  if t is not None]
        ending: tuple[float, list[int], int | None] | None = None
        if inside and self.lexicon.surfaces[inside[-1]] == rest:
            ending = (float(row[inside[-1]]), [inside[-1]], None)  # ends exactly at the end
            inside = inside[:-1]
        u, lp = self._runs_past(text, j)
        running: tuple[float, list[int], int | None] | None = (lp, [], u) if u >= 0 else None
        # A token ending exactly at the end keeps its continuation (the row after it), while the tokens running
        # past stay covers of this boundary either way: only a negligible ending token gives way to one read ahead.
        reach = ending if ending is not None and (running is None or ending[0] >= running[0] + LOG_ENDING_SHARE) \
            else running
        best_mass = max((o[0] for o in (ending, running) if o is not None), default=-math.inf)
        step = max(inside, key=lambda t: float(row[t]), default=-1)
        if step >= 0 and float(row[step]) > best_mass:
            yield from self._feed([*self.head, *path, step], exact=False)
            on = yield from self._best_from(text, [*path, step])
            if on is not None and float(row[step]) + on[0] > best_mass:
                return float(row[step]) + on[0], [step, *on[1]], on[2]
        return None if reach is None else (best_mass, reach[1], reach[2])

    def _agreeing(self, text: bytes) -> int:
        """How many of the member's generated tokens (from the first) still spell the text."""
        n = 0
        for j, t in enumerate(self.ids[len(self.head):]):
            s, start = self.lexicon.surfaces[t], self.ends[j]
            if start + len(s) > len(text) or text[start : start + len(s)] != s:
                break
            n += 1
        return n

    def _runs_past(self, text: bytes, j: int) -> tuple[int, float]:
        """The likeliest token at generated boundary ``j`` that spells the text from there and runs past its
        end, with its log-prob (``(-1, -inf)`` if none)."""
        row = self.rows_at.get(len(self.head) + j)
        if row is None:
            return -1, -math.inf
        vocab = self.lexicon.sorted
        lo, hi = vocab.longer(text[self.ends[j]:])
        if lo >= hi:
            return -1, -math.inf
        ids = vocab.order[lo:hi]
        best = int(torch.argmax(row[ids]))
        return int(ids[best]), float(row[ids[best]])

    def _stops_short(self, text: bytes, j: int) -> int | None:
        """The likeliest token from the last boundary, if it runs past the end and the lead has longer tokens
        that extend its bytes beyond the end."""
        if self.maps is None:
            return None
        u, _ = self._runs_past(text, j)
        if u < 0:
            return None
        pending = len(text) - self.ends[j]
        if not pending:
            return u if self.maps.stops_short[u] else None
        return u if self.maps.remainder(self.lexicon.surfaces[u][pending:])[1] else None

    def _covers(self, text: bytes, n_path: int, ahead: int | None) -> list[Cover]:
        base, depth = len(self.head), self.lexicon.sorted.depth
        covers = []
        for j in range(n_path + 1):
            p, start = base + j, self.ends[j]
            pending = text[start:]
            if len(pending) > depth or p not in self.rows_at or start in self.dead:
                continue
            if not self.lexicon.sorted.reaches(text, start, len(text)):
                self.dead.add(start)  # no token spells the text from here on, however it grows
                continue
            skip = ahead if j == n_path else None
            covers.append(Cover(self.log_before[j], self.rows_at[p].numpy(), pending, skip=skip))
        if ahead is not None:
            j = n_path + 1
            beyond = self.lexicon.surfaces[ahead][len(text) - self.ends[n_path]:]
            covers.append(Cover(self.log_before[j], self.rows_at[base + j].numpy(), b"", ahead=beyond))
        return covers

    def _feed(self, want: list[int], exact: bool = True) -> Steps:
        """Bring the cache to ``want``, feeding only what differs from ``ids``; keep the rows at the last
        boundaries (a cover reaches back at most the member's longest token). With ``exact=False`` a cache
        that already holds ``want`` and more is left as it is (the rows up to ``want`` are what is needed,
        and the tokens after it may be read again)."""
        if want == self.ids:
            return
        if len(want) < len(self.ids) and self.ids[: len(want)] == want and len(want) in self.rows_at:
            if not exact:
                return
            crop_to(self.cache, len(want))  # back to a boundary already read: its row is kept
            n = len(want) - len(self.head)
            self.log_before, self.ends = self.log_before[: n + 1], self.ends[: n + 1]
            self.rows_at = {p: r for p, r in self.rows_at.items() if p <= len(want)}
            self.row, self.ids = self.rows_at[len(want)], list(want)
            return
        common = min(common_prefix(self.ids, want), len(want) - 1)  # always feed the last token: it gives the row
        while common >= len(self.head) and common not in self.rows_at:
            common -= 1  # the row that scores the first fed token was let go: feed from further back
        if common < len(self.ids):
            crop_to(self.cache, common)
        rows = yield Feed(self.cache, want[common:])  # rows[i] predicts want[common + i + 1]
        base = len(self.head)
        keep = max(common, base)
        self.log_before, self.ends = self.log_before[: keep - base + 1], self.ends[: keep - base + 1]
        self.rows_at = {p: r for p, r in self.rows_at.items() if p <= common}
        for i, r in enumerate(rows):
            p = common + i + 1
            self.rows_at[p] = r
            if p > keep:  # a generated token: its log-prob and where it ends
                t = want[p - 1]
                self.log_before.append(self.log_before[-1] + float(self.rows_at[p - 1][t]))
                self.ends.append(self.ends[-1] + len(self.lexicon.surfaces[t]))
        self.row = rows[-1]
        self.ids = list(want)
        # A cover reaches back at most one token (plus one read ahead) from the end.
        horizon = self.ends[-1] - 2 * self.lexicon.sorted.depth - 8
        self.rows_at = {p: r for p, r in self.rows_at.items() if p >= base and self.ends[p - base] >= horizon}
