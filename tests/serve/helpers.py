"""Helpers for the serve tests: an `openai` client for a test server, and a scripted slow fake pack."""

from __future__ import annotations

import threading
import time
from typing import Any

import openai

from lmfuse.ensemble.weighting import WeightReport

MODEL = "lmfuse-pack"


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


class FakeDecoding:
    """`lmfuse.ensemble.generate.Decoding` stand-in: echoes the prompt reversed, one character per step (at
    most ``max_new_tokens``), or ``pieces`` pieces "x" when the pack says so."""

    def __init__(self, owner: SlowPack, prompt: str, max_new_tokens: int = 64, **_: Any) -> None:
        if owner.fail is not None:
            raise owner.fail
        self.owner = owner
        self.out = list(("x" * owner.pieces if owner.pieces else prompt[::-1])[:max_new_tokens])
        self.weights: WeightReport | None = None
        self.text, self.finish_reason, self.n_tokens = "", None, 0
        self.pieces: list[str] = []
        self.done, self.error = False, None

    @property
    def started(self) -> bool:
        return self.weights is not None

    def advance(self) -> None:
        if self.weights is None:
            self.weights = self.owner.report()
            return
        piece = self.out.pop(0)
        self.owner.pieces_made += 1
        self.text += piece
        self.pieces.append(piece)
        self.n_tokens += 1
        if not self.out:
            self.finish_reason, self.done = "length", True


class FakeDecoder:
    """`lmfuse.ensemble.generate.Decoder` stand-in: each step takes ``delay`` seconds (after ``gate`` opens,
    when given) and records how many prompts joined in it (``SlowPack.calls``)."""

    def __init__(self, owner: SlowPack) -> None:
        self.owner, self.live, self.new = owner, [], 0

    def add(self, decoding: FakeDecoding) -> None:
        self.live.append(decoding)
        self.new += 1

    def drop(self, decoding: FakeDecoding) -> None:
        self.live.remove(decoding)

    def step(self) -> list[FakeDecoding]:
        owner = self.owner
        if self.new:
            owner.calls.append(self.new)
            self.new = 0
        owner.running.set()
        if owner.gate is not None:  # held until the test opens it: ordering without timing
            assert owner.gate.wait(timeout=60), "the test never opened the gate"
        time.sleep(owner.delay)
        for d in self.live:
            d.advance()
        done = [d for d in self.live if d.done]
        self.live = [d for d in self.live if not d.done]
        return done


class SlowPack:
    """A pack whose decoding steps take ``delay`` seconds each (after ``gate`` opens, when given) and echo each
    prompt reversed (or ``pieces`` pieces); it records how many prompts joined at each step and raises
    ``fail`` for every prompt when set."""

    def __init__(self, delay: float = 0.0, pieces: int = 0, fail: Exception | None = None,
                 gate: threading.Event | None = None) -> None:
        self.names = ["fake-a", "fake-b"]
        self.delay, self.pieces, self.fail, self.gate = delay, pieces, fail, gate
        self.calls: list[int] = []
        self.pieces_made = 0
        self.running = threading.Event()

    def report(self) -> WeightReport:
        return WeightReport(self.names, [0.25, 0.75], [2.0, 1.0], "token", "fake-b", "fixed", "product")

    def decoder(self) -> FakeDecoder:
        return FakeDecoder(self)

    def decoding(self, prompt: str, **kwargs: Any) -> FakeDecoding:
        return FakeDecoding(self, prompt, **kwargs)
