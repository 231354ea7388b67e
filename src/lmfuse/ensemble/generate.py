"""Fused decoding, top to bottom: one KV cache per member, each member reading the text in its own tokens.

The loop, per prompt:

1. Every member reads the prompt in its own tokenization into its own KV cache (one forward pass each);
   the last ``context_length - max_new_tokens - 1`` prompt tokens are kept when a prompt is too long for
   a member (left truncation, per member, in its own tokens). The same passes give the rows that fit
   the weights (`Pack.fit`) — no extra forward pass.
2. Each step fuses the members' next-token rows in the seed's vocabulary, picks a seed token (greedy, or
   temperature + top-p sampling), and appends it to the text.
3. Members then catch up on the new text:
   * the seed, and members with the seed's exact vocabulary, append the chosen id (so K = 1 reproduces
     the single model's own decoding exactly);
   * every other member reads the generated text in its own tokens: its canonical tokenization, or the
     ids it already holds plus its tokens of the new text, whichever it would have written itself
     (`_Reader.reading`); it keeps the longest common prefix of ids already in its cache
     (``DynamicCache.crop``: the rollback when the new text merges into its last token, e.g.
     ``"hel" + "lo" -> "hello"``) and feeds only the rest. Never a one-for-one translation of the
     seed's ids (which the reference PackLLM would do);
   * while the seed has emitted only part of a UTF-8 character (byte-fallback tokens), no other member
     can read the text; they abstain and the weights are renormalised over the members present.
4. Stop at the seed's EOS, at a stop string (the text is cut before it), or after ``max_new_tokens``
   seed tokens.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lmfuse.alignment import SurfaceIndex
from lmfuse.ensemble.fusion import FUSIONS
from lmfuse.ensemble.runs import TextRun, crop_to, forward_cached, new_cache
from lmfuse.errors import InputError

if TYPE_CHECKING:
    from lmfuse.ensemble.pack import Pack, WeightReport
    from lmfuse.models.member import Member


@dataclass
class Generation:
    text: str
    weights: WeightReport
    finish_reason: str  # "stop" | "length"
    n_tokens: int  # seed tokens generated (EOS included when it ended the text)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Healer:
    """What a text-mode member needs for token healing: its own surfaces and the seed's."""

    surfaces: list[bytes]  # member id -> surface bytes
    own: SurfaceIndex  # member's tokens by surface
    seed: SurfaceIndex  # seed's tokens by surface
    seed_width: int
    max_tail: int = 3  # generated tokens a heal may reach back over
    max_candidates: int = 64  # most likely extensions considered


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class _Reader:
    """One member's view of the text: the ids in its KV cache and its next-token row."""

    member: Member
    mode: str  # "seed" (appends chosen ids), "text" (re-tokenizes the generated text)
    head: list[int]  # prefix token + (truncated) prompt ids
    ids: list[int]
    cache: Any
    row: torch.Tensor | None  # [V] log-probs of the next token after ``ids``; None = abstains
    healer: Healer | None = None
    product: bool = True  # the pack's fusion rule is the product (holes get a floor) rather than the mixture
    healed: torch.Tensor | None = None  # [V_seed] next-text distribution, already in the seed's vocabulary
    surfaces: list[bytes] | None = None  # member id -> surface bytes (text mode: checks a piece's ids)
    text: str = ""  # the generated text ``ids[len(head):]`` spell
    # position p -> [V] row predicting ``ids[p]`` (the last ``history`` generated positions and the next one)
    rows_at: dict[int, torch.Tensor] = field(default_factory=dict)
    history: int = 8

    def __post_init__(self) -> None:
        if self.row is not None:
            self.rows_at[len(self.ids)] = self.row

    def append(self, token: int) -> None:
        self.row = forward_cached(self.member, [token], self.cache)[-1]
        self.ids.append(token)

    def _tail(self, want: list[int]) -> tuple[int, bytes, np.ndarray]:
        """Longest tail of generated tokens whose text some longer member token extends: (j, text, ids)."""
        h = self.healer
        if h is None:
            return 0, b"", np.zeros(0, dtype=np.int64)
        for j in range(min(h.max_tail, len(want) - len(self.head)), 0, -1):
            text = b"".join(h.surfaces[t] for t in want[-j:])
            ext = h.own.extending(text)
            if len(ext):
                return j, text, ext
        return 0, b"", np.zeros(0, dtype=np.int64)

    def _extended(self, generated: str) -> list[int] | None:
        """``ids`` + the member's tokens of the new text only (its reading so far kept), if they spell it."""
        if self.surfaces is None or len(generated) <= len(self.text) or not generated.startswith(self.text):
            return None
        piece = generated[len(self.text):]
        new = self.member.encode(piece).ids
        # A tokenizer may add a dummy prefix space to a piece (SentencePiece) or drop spaces (WordPiece).
        return self.ids + new if self._spell(new) == piece.encode("utf-8") else None

    def _spell(self, ids: Sequence[int]) -> bytes:
        """The bytes ``ids`` spell in this member's surfaces (ids of logit padding spell nothing)."""
        surfaces = self.surfaces or []
        return b"".join(surfaces[t] if t < len(surfaces) else b"" for t in ids)

    def reading(self, generated: str) -> list[int]:
        """The ids the member reads ``generated`` as: its canonical tokenization, unless it would have
        written the text in its own pieces so far.

        A tokenization of a text that is still growing is not always a prefix of the tokenization of the
        longer text. Byte-level BPE groups a text-final whitespace run into one token (``"\n\n"`` ->
        ``ĊĊ``) but, before a word, splits off the last whitespace character (``Ċ Ċ The``), and BPE merges
        re-segment earlier pieces as text arrives (``cl as`` -> ``cl a ss``). A model never sees ``ĊĊ`` before a word in
        training, so re-reading the text canonically at every step puts it in a context it does not know
        (SmolLM2 writes ``"2."`` after ``ĊĊ`` but ``"The"`` after ``Ċ Ċ``). The alternative reading keeps
        the member's ids and tokenizes only the new text. Where the two first differ (position ``p``),
        the member's own row at ``p`` decides: the reading whose token there it finds more likely is the
        one it would have written itself (ties: canonical). A merge such as ``"hel" + "lo"`` still
        becomes ``"hello"`` because the member prefers ``hello`` to ``hel`` before it.
        """
        canonical = self.head + (self.member.encode(generated).ids if generated else [])
        extended = self._extended(generated)
        if extended is None or extended == canonical:
            return canonical
        return extended if self._prefers(extended, canonical) else canonical

    def _prefers(self, a: list[int], b: list[int]) -> bool:
        """Whether, at the first position ``a`` and ``b`` differ, the member's own row there finds ``a``'s
        token more likely than ``b``'s (False where that row is not at hand)."""
        p = common_prefix(a, b)
        if p >= min(len(a), len(b)) or common_prefix(self.ids, a) < p:
            return False
        row = self.rows_at.get(p)  # rows are kept for positions of ``ids``, here shared with ``a[:p]``
        return row is not None and float(row[a[p]]) > float(row[b[p]])

    def sync(self, generated: str) -> None:
        """Bring the cache to ``head + reading(generated)``, reusing the common prefix.

        Token healing: when the text ends with tokens ``t_1..t_j`` whose joint text is a proper prefix of
        longer member tokens (the seed wrote a piece of a word the member holds as one token), the member's
        row *before* ``t_1`` is consulted too. If its most likely extension beats ``t_1``, the member's next
        text is the rest of those extensions (mapped to the seed's longest-prefix tokens), not a guess
        from the middle of a token; otherwise the split is kept and the row after ``t_j`` is used.
        Whitespace the member would join to the next word is healed the same way (`_word_split`).
        """
        want = self.reading(generated)
        self.healed = None
        self.text = generated
        split = self._word_split(generated, want)
        if split is not None:
            before, tail, alone, ext = split
            self.healed = self._heal(self._feed(before), alone, tail, ext)
            if self.healed is not None:
                self.text = generated[: len(generated) - len(tail.decode("utf-8"))]  # what ``ids`` spell
                return
        if common_prefix(self.ids, want) == len(want) == len(self.ids) and self.row is not None:
            return
        j, tail, ext = self._tail(want)
        self._feed(want, back=j)
        if j:
            self.healed = self._heal(self.rows_at[len(want) - j], want[-j], tail, ext)

    def _feed(self, want: list[int], back: int = 0) -> torch.Tensor:
        """Bring the cache to ``want`` and return its next-token row, feeding only what differs from
        ``ids``; with ``back`` > 0 the row predicting ``want[-back]`` is kept too (the heal reads it)."""
        common = common_prefix(self.ids, want)
        # Rows of positions <= common stay valid (they depend on ids[:p] only); the rest are recomputed.
        self.rows_at = {p: r for p, r in self.rows_at.items() if p <= common and p > len(want) - self.history}
        common = min(common, len(want) - 1)  # always feed at least the last token (it gives the next row)
        if back and len(want) - back not in self.rows_at:
            common = min(common, len(want) - 1 - back)  # feed one token before the tail too: its row heals
        if common < len(self.ids):
            crop_to(self.cache, common)
        rows = forward_cached(self.member, want[common:], self.cache)  # rows[i] predicts want[common + i + 1]
        for i in range(max(0, len(rows) - self.history), len(rows)):
            self.rows_at[common + i + 1] = rows[i]
        self.row = rows[-1]
        self.ids = list(want)
        return self.row

    def _word_split(self, generated: str, want: list[int]) -> tuple[list[int], bytes, int, np.ndarray] | None:
        """``(ids before, tail, tail's own token, tokens extending tail)`` where the text ends in whitespace
        that this member joins to the next word, else None.

        Byte-level BPE reads ``"\n    return"`` as ``"\n   "`` + ``" return"``, but a text that *ends* in
        ``"\n    "`` as one whitespace token, after which a model has only ever seen a blank line: read
        that way, it votes for ``"\n"`` and a pack with a seed that writes indentation as its own token
        loops on blank lines. Where the member's tokens of the text plus a letter end in a token that
        starts inside the text, the text is read up to that token, and the heal decides from there; but only
        where the member, at the first token the two readings differ, prefers that boundary's token to the
        reading ``want`` (a member whose own ``"ĠĠĠ"`` the seed just wrote goes on to ``" if"`` itself).
        """
        h = self.healer
        if h is None or not generated or not generated[-1].isspace():
            return None
        probe = self.member.encode(generated + "a").ids
        if not probe or probe[-1] >= len(h.surfaces) or not h.surfaces[probe[-1]].endswith(b"a"):
            return None
        tail = h.surfaces[probe[-1]][:-1]
        if not tail.isspace() or self._spell(probe[:-1]) + tail != generated.encode("utf-8"):  # a dummy prefix
            return None
        before = self.head + probe[:-1]
        if not self._prefers(before, want):
            return None
        alone, n = h.own.longest_prefix(tail)
        ext = h.own.extending(tail)
        if n != len(tail) or not len(ext):
            return None
        return before, tail, alone, ext

    def _heal(self, before: torch.Tensor, first: int, tail: bytes, ext: np.ndarray) -> torch.Tensor | None:
        h = self.healer
        assert h is not None
        cand = torch.from_numpy(ext)
        scores = before[cand]
        if float(scores.max()) <= float(before[first]):
            return None  # the member itself would have split here: keep its row after the tail
        top = scores.topk(min(h.max_candidates, len(cand)))
        out = torch.full((h.seed_width,), float("-inf"))
        for lp, v in zip(top.values.tolist(), cand[top.indices].tolist(), strict=True):
            a, _ = h.seed.longest_prefix(h.surfaces[v][len(tail):])
            if a >= 0:
                out[a] = float(torch.logaddexp(out[a], torch.tensor(lp)))
        if not bool(torch.isfinite(out).any()):
            return None
        out = out - torch.logsumexp(out, 0)
        # Seed tokens no extension starts with: "as unlikely as the member's least likely token" (cf.
        # fill_holes), so under the product rule the member does not flatten or veto the rest.
        return torch.where(torch.isfinite(out), out, before.min()) if self.product else out


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
    """Drop trailing U+FFFD: bytes of a character the seed has not finished emitting."""
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
        self.seed_k = analysis.seed
        self.readers = []
        for k, m in enumerate(pack.members):
            mode = "seed" if pack.same_tokenizer(k, self.seed_k) else "text"
            healer = None
            if mode == "text" and float(self.lam[k]) > 0 and pack.healing:
                healer = Healer(pack._table(k).surface, pack.surface_index(k), pack.surface_index(self.seed_k),
                                pack.members[self.seed_k].logits_width)
            surfaces = pack._table(k).surface if mode == "text" else None
            self.readers.append(_Reader(m, mode, heads[k], list(heads[k]), caches[k], rows[k], healer,
                                        pack.fusion == "product", surfaces=surfaces))
        seed_member = pack.members[self.seed_k]
        self.allowed = allowed_ids(seed_member)
        self.eos = seed_member.tokenizer.eos_token_id
        self.active = [k for k in range(len(pack.members)) if float(self.lam[k]) > 0 or k == self.seed_k]

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def _fused_row(self) -> torch.Tensor:
        pack = self.pack
        rows, present = [], []
        for k in self.active:
            reader = self.readers[k]
            r = reader.row
            present.append(r is not None)
            if reader.healed is not None:
                rows.append(reader.healed)
            elif r is not None:
                rows.append(pack.project(k, self.seed_k, r[None])[0])
            else:
                rows.append(torch.zeros(pack.members[self.seed_k].logits_width))
        w = self.lam[self.active] * torch.tensor(present)
        w = w / w.sum() if float(w.sum()) > 0 else (torch.arange(len(self.active)) ==
                                                   self.active.index(self.seed_k)).float()
        fused = FUSIONS.get(pack.fusion)(torch.stack(rows), w)
        return fused.masked_fill(~self.allowed, float("-inf"))

    def _run(self) -> Iterator[str]:
        seed_tok = self.pack.members[self.seed_k].tokenizer
        generated: list[int] = []
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
            full = seed_tok.decode(generated, skip_special_tokens=False)
            text = stable_text(full)
            cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
            if cut >= 0:
                self.text, self.finish_reason = text[:cut], "stop"
                break
            self.text = text
            if self.n_tokens >= self.max_new_tokens:
                break
            for k in self.active:
                reader = self.readers[k]
                if reader.mode == "seed":
                    reader.append(token)
                elif text == full:
                    reader.sync(text)
                else:
                    reader.row, reader.healed = None, None  # mid-character: nothing it can read yet
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
