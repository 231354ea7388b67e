"""Fused decoding, top to bottom: many prompts at once, one KV cache per prompt and member, each member
reading the text in its own tokens.

Per prompt (a `Decoding`):

1. Every member reads the prompt in its own tokenization into its own KV cache; the last
   ``context_length - max_new_tokens - 1`` prompt tokens are kept when a prompt is too long for a member
   (left truncation, per member, in its own tokens). The same passes give the rows that fit the weights
   (`Pack.fit`): no extra forward pass.
2. The **lead** (the *seed* of `WeightReport` and the docs) is the member with the largest weight (ties: the
   lowest prompt NLL), or the pack's fixed ``seed_member``. Decoding emits the lead's tokens, so with
   one-hot weights the pack decodes exactly as that member alone, whoever read the prompt best.
3. Each step fuses, over the lead's vocabulary, the lead's own next-token row and every other weighted
   member's **vote** (`lmfuse.ensemble.votes`): its exact probability of the text that comes next, by
   prefix covering from the boundaries of its own reading. The weights are renormalised over the members
   that can speak (`lmfuse.ensemble.weighting.fused`, the rule the fit and scoring use). Then it
   picks a token (greedy, or temperature + top-p sampling with the prompt's own generator) and appends it.
4. Members catch up on the new text (`lmfuse.ensemble.reader.Reader`): the lead, and members with its
   vocabulary, append the chosen id; every other member reads the text on in its own likeliest pieces
   (rolling back what no longer spells it).
5. Stop at the lead's EOS, at a stop string (the text is cut before it), or after ``max_new_tokens`` lead
   tokens.

Many prompts (the `Decoder`): a step of every live prompt runs together. The readers' feeds are
generators (`lmfuse.ensemble.reader.Steps`), so the decoder collects the feeds of every prompt for each
member, puts them through **one batched forward pass per member** (`lmfuse.models.member.Member.feed`:
each cache left-padded, each row at its own positions), and runs the members **at the same time**, one
worker thread per member (`MemberWorkers`), each on its own device. Only the rows that fusion needs
(float32, on the CPU) leave a member's device. A prompt may join while others decode (continuous
batching: its prompt pass runs in the next round), and leave at any step. Greedy decoding of a prompt
gives the same text whatever else is in the batch (tested), up to float rounding of batched matrix
products (log-probs agree to ~1e-4); sampling draws from each prompt's own seeded generator.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from lmfuse.ensemble.fusion import fill_holes
from lmfuse.ensemble.reader import Reader, Steps
from lmfuse.ensemble.runs import TextRun
from lmfuse.ensemble.vocab import PackVocab
from lmfuse.ensemble.votes import Cover, vote
from lmfuse.ensemble.weighting import ONLINE, WeightOptions, WeightReport, fused, updated
from lmfuse.errors import InputError
from lmfuse.models.member import Feed, Member, new_cache

T = TypeVar("T")


class Pack(Protocol):
    """What decoding needs of `lmfuse.ensemble.pack.Pack` (which imports this module)."""

    members: list[Member]
    vocab: PackVocab
    workers: MemberWorkers

    @property
    def names(self) -> list[str]: ...

    @property
    def fusion(self) -> str: ...

    @property
    def options(self) -> WeightOptions: ...

    def analyse(self, text: str, runs: Sequence[TextRun] | None = None) -> Any: ...

    def fit(self, a: Any) -> tuple[torch.Tensor, WeightReport]: ...


@dataclass
class Generation:
    text: str
    weights: WeightReport
    finish_reason: str  # "stop" | "length"
    n_tokens: int  # lead tokens generated (EOS included when it ended the text)
    timings: dict[str, float] = field(default_factory=dict)


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


@dataclass
class Task:
    """One member's part of one prompt's round: a generator of feeds for ``member`` (index in the pack)."""

    owner: Decoding
    member: int
    steps: Steps
    request: Feed | None = None


class Decoding:
    """One prompt's fused decoding, stepped by a `Decoder`. ``pieces`` fills with text as it is decided
    (held back by the longest stop string); ``done`` once it has finished or failed (``error``)."""

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
        self.reading = b""  # what the members other than the lead read in the round that follows a step
        self.pieces: list[str] = []
        self.done = False
        self.error: BaseException | None = None
        self.weights: WeightReport | None = None
        self.timings: dict[str, float] = {"prompt_forward": 0.0, "fit": 0.0, "decode": 0.0, "steps": 0}
        self.cut: list[float] = []  # per step and voting member: the share of its vote cut short (votes.Vote.cut)
        self.readers: dict[int, Reader] = {}
        self.covers: dict[int, list[Cover] | None] = {}
        self._heads = self._encode_prompt()
        self._prompt_rows: dict[int, tuple[Any, torch.Tensor]] = {}
        self._tasks = [Task(self, k, self._read_prompt(k)) for k in range(len(pack.members))]
        self._clock = time.perf_counter()
        self._generated: list[int] = []
        self._spelled = b""  # the bytes the lead's tokens spell (a character may be unfinished)
        self._emitted = 0

    @property
    def started(self) -> bool:
        """Whether the prompt has been read and the weights fitted (``weights`` is set)."""
        return self.weights is not None

    # ---- rounds: what the decoder runs, and what happens after ----------------------------------------
    def tasks(self) -> list[Task]:
        """This round's member work (the prompt pass, then each step's catch-up); taken once."""
        tasks, self._tasks = self._tasks, []
        return tasks

    def advance(self) -> None:
        """After a round: fit the weights once the prompt is read, else decide the next token."""
        if self.done:
            return
        if not self.started:
            self._start()
            return
        self._step()

    def fail(self, error: BaseException) -> None:
        self.error, self.done, self._tasks = error, True, []

    # ---- the prompt -----------------------------------------------------------------------------------
    def _encode_prompt(self) -> list[tuple[list[int], list[tuple[int, int]], int]]:
        heads = []
        for m in self.pack.members:
            enc = m.encode(self.prompt)
            keep = m.context_length - self.max_new_tokens - 1
            if keep < 1:
                raise InputError(f"member {m.name!r}: max_new_tokens={self.max_new_tokens} leaves no room for "
                                 f"the prompt in its context of {m.context_length} tokens")
            if not enc.ids:
                raise InputError(f"member {m.name!r}: the prompt {self.prompt[:40]!r} has no tokens")
            # Long prompts keep their end (reported in the weights' ``truncated``).
            heads.append((enc.ids[-keep:], enc.offsets[-keep:], max(0, len(enc.ids) - keep)))
        return heads

    def _read_prompt(self, k: int) -> Steps:
        member, cache = self.pack.members[k], new_cache()
        rows = yield Feed(cache, [member.prefix_token_id, *self._heads[k][0]])
        self._prompt_rows[k] = (cache, rows)

    def _start(self) -> None:
        pack = self.pack
        t1 = time.perf_counter()
        self.timings["prompt_forward"] = t1 - self._clock
        runs = [TextRun(ids, offs, self._prompt_rows[k][1][:-1]) for k, (ids, offs, _) in enumerate(self._heads)]
        analysis = pack.analyse(self.prompt, runs)
        analysis.forward_seconds = t1 - self._clock
        self.lam, weights = pack.fit(analysis)
        self.weighting = weights.weighting
        weights.truncated = {m.name: h[2] for m, h in zip(pack.members, self._heads, strict=True) if h[2]}
        self.weights = weights
        self.timings["fit"] = time.perf_counter() - t1
        self.lead = pack.names.index(weights.seed)
        self.active = [k for k in range(len(pack.members)) if float(self.lam[k]) > 0 or k == self.lead]
        for k in self.active:
            cache, rows = self._prompt_rows[k]
            head = [pack.members[k].prefix_token_id, *self._heads[k][0]]
            maps = None if pack.vocab.same_tokenizer(k, self.lead) else pack.vocab.lead_maps(k, self.lead)
            self.readers[k] = Reader(pack.members[k], head, list(head), cache, rows[-1], pack.vocab.lexicon(k), maps)
        self._prompt_rows.clear()
        self._tasks = [Task(self, k, self._catch_up(k, b"")) for k in self.active if self.readers[k].maps is not None]
        lead = pack.members[self.lead]
        self.allowed = allowed_ids(lead)
        self.eos = lead.tokenizer.eos_token_id
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self._clock = time.perf_counter()

    # ---- one step -------------------------------------------------------------------------------------
    def _catch_up(self, k: int, text: bytes) -> Steps:
        self.covers[k] = yield from self.readers[k].read(text)

    def _fused_row(self) -> torch.Tensor:
        """``[W_L]`` the fused log-distribution of the lead's next token."""
        pack = self.pack
        width = pack.members[self.lead].logits_width
        rows = torch.zeros(len(pack.members), width)
        speaks = torch.zeros(len(pack.members), dtype=torch.bool)
        for k in self.active:
            reader = self.readers[k]
            if reader.maps is None:  # the lead's own vocabulary: its row as it is
                row = reader.row[:width]
                if row.shape[0] < width:
                    row = torch.cat([row, torch.full((width - row.shape[0],), float("-inf"))])
            else:
                covers = self.covers.get(k)
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
            rows[k] = fill_holes(row) if pack.fusion == "product" else row
            speaks[k] = True
        self._rows, self._speaks = rows, speaks
        out = fused(rows[:, None], self.lam, speaks[:, None], pack.fusion)[0]
        return out.masked_fill(~self.allowed, float("-inf"))

    def _follow(self, token: int, n_bytes: int) -> None:
        """``online`` weights follow the text: after each token, one step on the fused log-loss of it (the
        lead's own row and the others' votes, as fused; `lmfuse.ensemble.weighting.updated`), its size the
        per-byte rate times the token's bytes (a token's loss is the sum of its bytes'). The lead stays the
        member chosen on the prompt: the weights move, the tokens decoding emits stay the lead's."""
        rate = min(self.pack.options.online_rate * max(n_bytes, 1), 0.5)
        w = updated(self.lam.double().numpy(), self._rows.double().numpy(), token, self._speaks.numpy(), rate,
                    self.pack.fusion)
        self.lam = torch.from_numpy(w).float()

    def _step(self) -> None:
        self.timings["steps"] += 1
        token = pick(self._fused_row(), self.temperature, self.top_p, self.generator)
        self.n_tokens += 1
        if token == self.eos:
            self._finish("stop")
            return
        self._generated.append(token)
        surfaces = self.pack.vocab.lexicon(self.lead).surfaces
        if self.weighting == ONLINE:
            self._follow(token, len(surfaces[token]) if token < len(surfaces) else 1)
        full = self.pack.members[self.lead].tokenizer.decode(self._generated, skip_special_tokens=False)
        text = stable_text(full)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text = text[:cut]
            self._finish("stop")
            return
        self.text = text
        if self.n_tokens >= self.max_new_tokens:
            self._finish("length")
            return
        self._spelled += surfaces[token] if token < len(surfaces) else b""
        # The others read the decoded text (a lossy lead's surfaces may not spell it: WordPiece) and, while
        # the lead is inside a character, the bytes of it written so far.
        reading = text.encode("utf-8") + (self._spelled[valid_utf8_prefix(self._spelled):] if text != full else b"")
        self.reading = reading
        self._tasks = [Task(self, k, self.readers[k].append(token) if self.readers[k].maps is None
                            else self._catch_up(k, reading)) for k in self.active]
        safe = len(self.text) - self._hold
        if safe > self._emitted:
            self.pieces.append(self.text[self._emitted:safe])
            self._emitted = safe

    def _finish(self, reason: str) -> None:
        self.finish_reason, self.done = reason, True
        self.timings["decode"] = time.perf_counter() - self._clock
        if len(self.text) > self._emitted:
            self.pieces.append(self.text[self._emitted:])
            self._emitted = len(self.text)
        for reader in self.readers.values():  # a finished prompt keeps its readings, not its caches
            reader.cache, reader.rows_at = None, {}

    def result(self) -> Generation:
        if self.error is not None:
            raise self.error
        assert self.weights is not None and self.finish_reason is not None
        return Generation(self.text, self.weights, self.finish_reason, self.n_tokens, dict(self.timings))


class MemberWorkers:
    """One worker thread per member: a round's forward passes of different members run at the same time
    (each member on its own device). ``parallel=False`` runs them one after another in the caller."""

    def __init__(self, members: Sequence[Member], parallel: bool = True) -> None:
        self.members = list(members)
        self.parallel = parallel and len(members) > 1
        self._pool = ThreadPoolExecutor(len(members), "lmfuse-member") if self.parallel else None

    def feed(self, feeds: dict[int, list[Feed]]) -> dict[int, list[torch.Tensor] | BaseException]:
        """Every member's feeds, each member's as one batch (`Member.feed`)."""
        return self.run({k: partial(self.members[k].feed, fs) for k, fs in feeds.items()})

    def run(self, calls: dict[int, Callable[[], T]]) -> dict[int, T | BaseException]:
        """Each member's call, in its worker; a call that raises gives its exception (after every member has
        finished: nothing is left running)."""
        out: dict[int, T | BaseException] = {}
        if self._pool is None or len(calls) == 1:
            for k, call in calls.items():
                try:
                    out[k] = call()
                except Exception as exc:
                    out[k] = exc
            return out
        futures = {k: self._pool.submit(call) for k, call in calls.items()}
        for k, future in futures.items():
            error = future.exception()
            out[k] = error if error is not None else future.result()
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class Decoder:
    """Steps many `Decoding`s together: per round, each member's feeds from every prompt as one batch."""

    def __init__(self, pack: Pack) -> None:
        self.pack = pack
        self.live: list[Decoding] = []

    def add(self, decoding: Decoding) -> None:
        self.live.append(decoding)

    def step(self) -> list[Decoding]:
        """One round for every live prompt (its prompt pass, or one token); returns those that finished."""
        tasks = [t for d in self.live for t in d.tasks()]
        self._run(tasks)
        for d in self.live:
            try:
                d.advance()
            except Exception as exc:  # this prompt's fit or step failed: the others go on
                d.fail(exc)
        finished = [d for d in self.live if d.done]
        self.live = [d for d in self.live if not d.done]
        return finished

    def drop(self, decoding: Decoding) -> None:
        """Stop decoding a prompt (its client went away)."""
        decoding.fail(InputError("decoding was stopped"))
        self.live = [d for d in self.live if d is not decoding]

    def _run(self, tasks: list[Task]) -> None:
        """Drive the tasks' generators to the end, a batched feed per member per turn."""
        live = [t for t in tasks if self._send(t, None)]
        while live:
            by_member: dict[int, list[Task]] = {}
            for t in live:
                by_member.setdefault(t.member, []).append(t)
            results = self.pack.workers.feed({k: [t.request for t in ts if t.request is not None]
                                              for k, ts in by_member.items()})  # members at the same time
            nxt = []
            for k, ts in by_member.items():
                result = results[k]
                # A failed batch: find the prompt whose feed fails; the others go on.
                rows = self._one_by_one(k, ts) if isinstance(result, BaseException) else list(result)
                for t, r in zip(ts, rows, strict=True):
                    if r is not None and not t.owner.done and self._send(t, r):
                        nxt.append(t)
            live = nxt

    def _one_by_one(self, k: int, tasks: list[Task]) -> list[torch.Tensor | None]:
        out: list[torch.Tensor | None] = []
        for t in tasks:
            assert t.request is not None
            try:
                out.extend(self.pack.members[k].feed([t.request]))
            except Exception as exc:
                t.owner.fail(exc)
                out.append(None)
        return out

    @staticmethod
    def _send(task: Task, rows: torch.Tensor | None) -> bool:
        """Resume a task with its rows; True while it has another feed."""
        try:
            task.request = task.steps.send(rows)  # type: ignore[arg-type]  # None starts the generator
            return True
        except StopIteration:
            return False
        except Exception as exc:
            task.owner.fail(exc)
            return False


def generate_all(pack: Pack, decodings: Sequence[Decoding], batch_size: int | None = None) -> list[Decoding]:
    """Decode every prompt, at most ``batch_size`` at a time (all at once by default); a prompt joins as
    soon as another finishes."""
    waiting = list(decodings)
    decoder = Decoder(pack)
    limit = batch_size or len(waiting)
    while waiting or decoder.live:
        while waiting and len(decoder.live) < limit:
            decoder.add(waiting.pop(0))
        decoder.step()
    return list(decodings)


class Stream:
    """Iterator over text pieces of one fused generation. ``weights`` is known when it is created."""

    def __init__(self, pack: Pack, prompt: str, **kwargs: Any) -> None:
        self.decoding = Decoding(pack, prompt, **kwargs)
        self._decoder = Decoder(pack)
        self._decoder.add(self.decoding)
        while not (self.decoding.started or self.decoding.done):
            self._decoder.step()
        self._raise()

    def _raise(self) -> None:
        if self.decoding.error is not None:
            raise self.decoding.error

    def __getattr__(self, name: str) -> Any:
        # text, weights, finish_reason, n_tokens, timings, cut, readers, covers: the decoding's
        return getattr(self.__dict__["decoding"], name)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        d = self.decoding
        while not d.pieces:
            if d.done:
                self._raise()
                raise StopIteration
            self._decoder.step()
        return d.pieces.pop(0)
