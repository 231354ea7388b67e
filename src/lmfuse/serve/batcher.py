"""The request queue in front of the pack: admission (429), continuous batching in one pack thread, disconnects.

    handler --admit()--> slot (or 429) --submit(job)--> inbox --pack thread--> decoder (<= max_batch prompts)
        each step: queued jobs join (up to max_batch live), one step of every live prompt runs with each
        member's forward passes batched over them (`lmfuse.ensemble.generate.Decoder`), pieces and results
        are handed back to the event loop with call_soon_threadsafe

The event loop never runs model code. A request that arrives while others decode joins at the next step
(continuous batching); each prompt keeps its own parameters and sampling seed, so any requests can share a
step. A job whose client went away is marked cancelled: if it is still queued it is dropped before it
reaches the pack, a decoding one leaves the batch at the next step, and its slot is released by the handler
as soon as the disconnect is seen (the slot counts admitted, unfinished requests).

The pack is anything with ``decoder()`` and ``decoding(prompt, **params)`` (`lmfuse.ensemble.Pack`; the tests
use a scripted fake).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import secrets
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from lmfuse.serve.config import ServeConfig
from lmfuse.serve.errors import APIError

log = logging.getLogger("lmfuse.serve")
IDLE_POLL_S = 0.1  # how often an idle pack thread looks for a stop request
RECENT_STEPS = 10_000


@dataclass(frozen=True)
class Params:
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None

    def kwargs(self) -> dict[str, Any]:
        """`lmfuse.ensemble.generate.Decoding`'s arguments. A request without a seed samples with a fresh one
        (as OpenAI's API does); with one, the same request gives the same text whatever it shares a step with."""
        seed = self.seed if self.seed is not None else secrets.randbits(31)
        return {"max_new_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "stop": list(self.stop), "seed": seed}


@dataclass
class Completed:
    """One finished generation, as the HTTP layer needs it."""

    text: str
    finish_reason: str
    completion_tokens: int
    prompt_tokens: int
    weights: dict[str, Any]
    seed_member: str


@dataclass
class Job:
    """One prompt to decode. Non-streaming jobs resolve ``future``; streaming jobs fill ``events`` with
    ``("start", weights_dict, seed_member)``, ``("piece", text)``, ``("end", Completed)`` or ``("error", exc)``."""

    prompt: str
    params: Params
    stream: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Completed] = field(init=False)
    events: asyncio.Queue[tuple[Any, ...]] = field(init=False, default_factory=asyncio.Queue)
    cancelled: threading.Event = field(init=False, default_factory=threading.Event)
    started: bool = field(init=False, default=False)  # a stream's "start" event has gone out

    def __post_init__(self) -> None:
        self.future = self.loop.create_future()

    # Called from the pack thread: hand values to the event loop.
    def resolve(self, value: Completed | BaseException) -> None:
        self.loop.call_soon_threadsafe(_settle, self.future, value)

    def emit(self, *event: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def fail(self, error: BaseException) -> None:
        if self.stream:
            self.emit("error", error)
        else:
            self.resolve(error)


def _settle(future: asyncio.Future[Completed], value: Completed | BaseException) -> None:
    if future.done():
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


def prompt_tokens(pack: Any, member_name: str, text: str) -> int:
    """Prompt length in the seed member's tokens (``usage.prompt_tokens``); 0 for packs without members."""
    for m in getattr(pack, "members", []):
        if m.name == member_name:
            return len(m.encode(text).ids)
    return 0


def completed(pack: Any, prompt: str, decoding: Any) -> Completed:
    report = decoding.weights
    return Completed(decoding.text, decoding.finish_reason or "length", decoding.n_tokens,
                     prompt_tokens(pack, report.seed, prompt), report.as_dict(), report.seed)


class Batcher:
    """Owns the inbox, the admission count and the pack thread. Start and stop it inside the app's lifespan."""

    def __init__(self, pack: Any, config: ServeConfig) -> None:
        self.pack, self.config = pack, config
        self.pending = 0  # admitted and not yet released (only touched on the event loop)
        # Prompts decoded together at each of the last steps (benchmarks read it); bounded for a long-lived server.
        self.batches: deque[int] = deque(maxlen=RECENT_STEPS)
        self._inbox: queue.Queue[Job] = queue.Queue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="lmfuse-pack", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10)
        while True:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                break
            job.fail(APIError(503, "the server is shutting down", "server_error"))

    # ---- admission ------------------------------------------------------------------------------------
    def admit(self, n: int = 1) -> None:
        """Take ``n`` slots or answer 429 (nothing is queued then)."""
        if self.pending + n > self.config.max_pending:
            raise APIError(429, f"the server is busy: {self.pending} requests pending (limit "
                                f"{self.config.max_pending}); retry later", "rate_limit_error",
                           code="queue_full")
        self.pending += n

    def release(self, n: int = 1) -> None:
        self.pending -= n

    def submit(self, prompt: str, params: Params, stream: bool) -> Job:
        if self._thread is None or self._stopping.is_set():
            raise APIError(503, "the server is not running", "server_error")
        job = Job(prompt, params, stream, asyncio.get_running_loop())
        self._inbox.put(job)
        return job

    # ---- the pack thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        decoder = self.pack.decoder()
        live: list[tuple[Job, Any]] = []
        while not self._stopping.is_set():
            if not live:
                try:
                    first = self._inbox.get(timeout=IDLE_POLL_S)
                except queue.Empty:
                    continue
                self._inbox.put(first)  # joins below with whatever comes in the batch window
                if self.config.max_batch > 1 and self.config.batch_window_ms > 0:
                    self._stopping.wait(self.config.batch_window_ms / 1000)
            live += self._admit(decoder, self.config.max_batch - len(live))
            if not live:
                continue
            self.batches.append(len(live))
            try:
                decoder.step()
            except Exception as exc:  # the decoder reports per prompt; this is a last resort, never fatal
                log.exception("pack step failed")
                for job, _ in live:
                    job.fail(exc)
                live, decoder = [], self.pack.decoder()
                continue
            live = [(job, d) for job, d in live if not self._deliver(decoder, job, d)]
        for job, _ in live:
            job.fail(APIError(503, "the server is shutting down", "server_error"))

    def _admit(self, decoder: Any, room: int) -> list[tuple[Job, Any]]:
        """Queued jobs that join the batch now (those whose client left are dropped unseen)."""
        joined: list[tuple[Job, Any]] = []
        while len(joined) < room:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                break
            if job.cancelled.is_set():
                continue
            try:
                decoding = self.pack.decoding(job.prompt, **job.params.kwargs())
            except Exception as exc:  # a bad prompt (no tokens for a member, ...): this job's error only
                job.fail(exc)
                continue
            decoder.add(decoding)
            joined.append((job, decoding))
        return joined

    def _deliver(self, decoder: Any, job: Job, decoding: Any) -> bool:
        """Hand a step's outcome to the job; True when the job has left the batch."""
        if job.cancelled.is_set():
            decoder.drop(decoding)  # the client left: stop decoding for it
            return True
        if decoding.error is not None:
            job.fail(decoding.error)
            return True
        if job.stream and decoding.started:
            if not job.started:
                job.started = True
                job.emit("start", decoding.weights.as_dict(), decoding.weights.seed)
            while decoding.pieces:
                job.emit("piece", decoding.pieces.pop(0))
        if not decoding.done:
            return False
        result = completed(self.pack, job.prompt, decoding)
        if job.stream:
            job.emit("end", result)
        else:
            job.resolve(result)
        return True
