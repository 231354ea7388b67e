"""Fused decoding, top to bottom: one KV cache per member, each member reading the text in its own tokens.

The loop, per prompt:

1. Every member reads the prompt in its own tokenization into its own KV cache (one forward pass each);
   the last ``context_length - max_new_tokens - 1`` prompt tokens are kept when a prompt is too long for
   a member (left truncation, per member, in its own tokens). The same passes give the rows that fit
   the weights (`Pack.fit`) — no extra forward pass.
2. The **lead** (the *seed* of `WeightReport` and the docs) is the member with the largest weight (ties: the
   lowest prompt NLL), or the pack's fixed ``seed_member``. Decoding emits the lead's tokens, so with one-hot weights the pack decodes exactly as
   that member alone, whoever read the prompt best.
3. Each step fuses, over the lead's vocabulary, the lead's own next-token row and every other weighted
   member's **vote** (`lmfuse.ensemble.votes`): its exact probability of the text that comes next, by
   prefix covering from the boundaries of its own reading, grouped by the lead token that text begins
   with. Then it picks a token (greedy, or temperature + top-p sampling) and appends it to the text.
4. Members catch up on the new text:
   * the lead, and members with the lead's exact vocabulary, append the chosen id (K = 1 is the single
     model's own cached decoding, bit for bit);
   * every other member reads the text in its own tokens up to its last *stable* boundary: the tokens
     its tokenizer gives the text whatever comes next (the common prefix of its tokenizations of the text
     followed by a letter, a space, a newline or a digit). Bytes after that boundary are *pending*: its
     covers run through them, so a member inside one of its own tokens, or inside a UTF-8 character the
     lead has emitted only part of, still votes. The KV cache keeps the common prefix of ids and rolls
     back the rest (``DynamicCache.crop``).
5. Stop at the lead's EOS, at a stop string (the text is cut before it), or after ``max_new_tokens``
   lead tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lmfuse.ensemble.fusion import FUSIONS, fill_holes
from lmfuse.ensemble.runs import TextRun, crop_to, forward_cached, new_cache
from lmfuse.ensemble.votes import Cover, LeadMaps, Lexicon, vote
from lmfuse.errors import InputError

if TYPE_CHECKING:
    from lmfuse.ensemble.pack import Pack, WeightReport
    from lmfuse.models.member import Member


@dataclass
class Generation:
    text: str
    weights: WeightReport
    finish_reason: str  # "stop" | "length"
    n_tokens: int  # lead tokens generated (EOS included when it ended the text)
    timings: dict[str, float] = field(default_factory=dict)


LOG_ENDING_SHARE = math.log(0.1)  # a token ending at the end is read unless it has < 10% of a running one's mass


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def valid_utf8_prefix(data: bytes) -> int:
    """Length of the longest prefix of ``data`` that is whole UTF-8 characters (a partial one is at most 3
    bytes long)."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            data[:cut].decode("utf-8")
            return cut
        except UnicodeDecodeError:
            continue
    return 0


@dataclass
class _Reader:
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

    def append(self, token: int) -> None:
        self.row = forward_cached(self.member, [token], self.cache)[-1]
        self.ids.append(token)

    def read(self, text: bytes) -> list[Cover] | None:
        """Bring the cache to the member's reading of ``text`` (the lead's bytes so far) and return its covers
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
        self._feed(self.head + path, exact=False)
        best = self._best_from(text, path)
        if best is None:
            return None
        _, tokens, ahead = best
        path = path + tokens
        if ahead is None:
            self._feed(self.head + path, exact=False)
            ahead = self._stops_short(text, len(path))
        self._feed(self.head + path + ([ahead] if ahead is not None else []))
        return self._covers(text, len(path), ahead)

    def _best_from(self, text: bytes, path: list[int]) -> tuple[float, list[int], int | None] | None:
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
            self._feed([*self.head, *path, step], exact=False)
            on = self._best_from(text, [*path, step])
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
        pending = text[self.ends[j]:]
        lo, hi = vocab.longer(pending)
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

    def _feed(self, want: list[int], exact: bool = True) -> None:
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
        rows = forward_cached(self.member, want[common:], self.cache)  # rows[i] predicts want[common + i + 1]
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


def allowed_ids(member: Member) -> torch.Tensor:
    """bool ``[logits_width]``: ids a member may emit: real tokens (not logit padding), EOS, no other special."""
    tok = member.tokenizer
    mask = torch.zeros(member.logits_width, dtype=torch.bool)
    mask[: min(len(tok), member.logits_width)] = True
    for tid in tok.all_special_ids:
        if tid < member.logits_width:
            mask[tid] = False
    if tok.eos_token_id is not None and tok.eos_token_id < member.logits_width:
        mask[tok.eos_token_id] = True
    return mask


def pick(log_probs: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Greedy (``temperature == 0``: argmax, first index on ties) or temperature + nucleus sampling."""
    if temperature <= 0:
        return int(torch.argmax(log_probs))
    probs = torch.softmax(log_probs / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p  # always keeps the most likely token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def stable_text(text: str) -> str:
    """Drop trailing U+FFFD: bytes of a character the lead has not finished emitting."""
    return text.rstrip("\ufffd")


class Stream:
    """Iterator over text pieces of one fused generation. ``weights`` is known when it is created."""

    def __init__(self, pack: Pack, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
                 top_p: float = 1.0, stop: Sequence[str] = (), seed: int = 0) -> None:
        if not prompt:
            raise InputError("empty prompt: give at least one character")
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
        if not 0 < top_p <= 1:
            raise InputError(f"top_p must be in (0, 1]; got {top_p}")
        if temperature < 0:
            raise InputError(f"temperature must be >= 0; got {temperature}")
        self.pack, self.prompt, self.max_new_tokens = pack, prompt, max_new_tokens
        self.temperature, self.top_p, self.stop = temperature, top_p, [s for s in stop if s]
        self.generator = torch.Generator().manual_seed(seed)
        self.finish_reason: str | None = None
        self.n_tokens = 0
        self.text = ""
        self.timings: dict[str, float] = {"prompt_forward": 0.0, "fit": 0.0, "decode": 0.0, "steps": 0}
        self._start()
        self._pieces = self._run()

    def _start(self) -> None:
        pack = self.pack
        t0 = time.perf_counter()
        runs, caches, heads, rows = [], [], [], []
        truncated: dict[str, int] = {}
        for m in pack.members:
            enc = m.encode(self.prompt)
            keep = m.context_length - self.max_new_tokens - 1
            if keep < 1:
                raise InputError(f"member {m.name!r}: max_new_tokens={self.max_new_tokens} leaves no room for "
                                 f"the prompt in its context of {m.context_length} tokens")
            ids, offs = enc.ids[-keep:], enc.offsets[-keep:]  # long prompts keep their end (reported)
            if len(enc.ids) > keep:
                truncated[m.name] = len(enc.ids) - keep
            if not ids:
                raise InputError(f"member {m.name!r}: the prompt {self.prompt[:40]!r} has no tokens")
            cache = new_cache()
            out = forward_cached(m, [m.prefix_token_id, *ids], cache)
            runs.append(TextRun(ids, offs, out[:-1]))
            caches.append(cache)
            heads.append([m.prefix_token_id, *ids])
            rows.append(out[-1])
        t1 = time.perf_counter()
        analysis = pack.analyse(self.prompt, runs)
        analysis.forward_seconds = t1 - t0
        self.lam, self.weights = pack.fit(analysis)
        self.weights.truncated = truncated
        self.timings["prompt_forward"] = t1 - t0
        self.timings["fit"] = time.perf_counter() - t1
        self.lead = pack.names.index(self.weights.seed)
        self.active = [k for k in range(len(pack.members)) if float(self.lam[k]) > 0 or k == self.lead]
        self.readers: dict[int, _Reader] = {}
        for k in self.active:
            maps = None if pack.same_tokenizer(k, self.lead) else pack.lead_maps(k, self.lead)
            self.readers[k] = _Reader(pack.members[k], heads[k], list(heads[k]), caches[k], rows[k],
                                      pack.lexicon(k), maps)
        self.covers: dict[int, list[Cover] | None] = {k: self.readers[k].read(b"") for k in self.active}
        lead = pack.members[self.lead]
        self.allowed = allowed_ids(lead)
        self.eos = lead.tokenizer.eos_token_id
        self.cut: list[float] = []  # per step and voting member: the share of its vote cut short (votes.Vote.cut)

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def _fused_row(self) -> torch.Tensor:
        """``[W_L]`` the fused log-distribution of the lead's next token."""
        pack = self.pack
        width = pack.members[self.lead].logits_width
        rows, weights = [], []
        for k in self.active:
            reader = self.readers[k]
            if reader.maps is None:  # the lead's own vocabulary: its row as it is
                row = reader.row[:width]
                if row.shape[0] < width:
                    row = torch.cat([row, torch.full((width - row.shape[0],), float("-inf"))])
            else:
                covers = self.covers[k]
                v = vote(reader.maps, covers) if covers is not None else None
                if v is None:
                    continue  # no cover reaches the end of the text: it sits this step out
                self.cut.append(v.cut)
                row = torch.from_numpy(np.log(v.probs, where=v.probs > 0, out=np.full(width, -np.inf))).float()
                if pack.fusion == "product":
                    # Lead tokens no cover reaches: as unlikely as the member's least likely token (a vote is
                    # sparse where a member is sure, so its own smallest vote would flatten it instead).
                    floor = min(float(row[torch.isfinite(row)].min()), float(reader.row.min()))
                    row = torch.where(torch.isfinite(row), row, torch.tensor(floor))
            rows.append(fill_holes(row) if pack.fusion == "product" else row)
            weights.append(float(self.lam[k]))
        w = torch.tensor(weights)
        w = w / w.sum() if float(w.sum()) > 0 else torch.full_like(w, 1 / len(weights))
        fused = FUSIONS.get(pack.fusion)(torch.stack(rows), w)
        return fused.masked_fill(~self.allowed, float("-inf"))

    def _run(self) -> Iterator[str]:
        lead_tok = self.pack.members[self.lead].tokenizer
        surfaces = self.pack.lexicon(self.lead).surfaces
        generated: list[int] = []
        spelled = b""  # the bytes the lead's tokens spell (a character may be unfinished)
        emitted = 0
        hold = max((len(s) for s in self.stop), default=1) - 1
        t0 = time.perf_counter()
        self.finish_reason = "length"
        while self.n_tokens < self.max_new_tokens:
            token = pick(self._fused_row(), self.temperature, self.top_p, self.generator)
            self.n_tokens += 1
            self.timings["steps"] += 1
            if token == self.eos:
                self.finish_reason = "stop"
                break
            generated.append(token)
            full = lead_tok.decode(generated, skip_special_tokens=False)
            text = stable_text(full)
            cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
            if cut >= 0:
                self.text, self.finish_reason = text[:cut], "stop"
                break
            self.text = text
            if self.n_tokens >= self.max_new_tokens:
                break
            spelled += surfaces[token] if token < len(surfaces) else b""
            # The others read the decoded text (a lossy seed's surfaces may not spell it: WordPiece) and, while
            # the seed is inside a character, the bytes of it written so far.
            reading = text.encode("utf-8") + (spelled[valid_utf8_prefix(spelled):] if text != full else b"")
            for k in self.active:
                reader = self.readers[k]
                if reader.maps is None:
                    reader.append(token)
                else:
                    self.covers[k] = reader.read(reading)
            safe = len(self.text) - hold
            if safe > emitted:
                yield self.text[emitted:safe]
                emitted = safe
        self.timings["decode"] = time.perf_counter() - t0
        if len(self.text) > emitted:
            yield self.text[emitted:]


def generate(pack: Pack, prompt: str, **kwargs: Any) -> Generation:
    stream = Stream(pack, prompt, **kwargs)
    for _ in stream:
        pass
    assert stream.finish_reason is not None
    return Generation(stream.text, stream.weights, stream.finish_reason, stream.n_tokens, dict(stream.timings))
