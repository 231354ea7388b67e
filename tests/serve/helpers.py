"""Helpers for the serve tests: an `openai` client for a test server, and a scripted slow fake pack."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import openai

from lmfuse.ensemble.generate import Generation
from lmfuse.ensemble.weighting import WeightReport

MODEL = "lmfuse-pack"


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


class FakeStream:
    """`Pack.stream` stand-in: ``pieces`` pieces, ``delay`` seconds each."""

    def __init__(self, owner: SlowPack, prompt: str, pieces: int) -> None:
        self.owner, self.prompt, self.left = owner, prompt, pieces
        self.weights = owner.report()
        self.text, self.finish_reason, self.n_tokens = "", None, 0

    def __iter__(self) -> FakeStream:
        return self

    def __next__(self) -> str:
        if self.left == 0:
            self.finish_reason = "length"
            raise StopIteration
        time.sleep(self.owner.delay)
        self.left -= 1
        self.n_tokens += 1
        self.owner.pieces_made += 1
        self.text += "x"
        return "x"


class SlowPack:
    """A pack whose generate takes ``delay`` seconds per call (after ``gate`` opens, when given) and echoes
    each prompt reversed; it records the size of every batch it was given and raises ``fail`` when set."""

    def __init__(self, delay: float = 0.0, pieces: int = 5, fail: Exception | None = None,
                 gate: threading.Event | None = None) -> None:
        self.names = ["fake-a", "fake-b"]
        self.delay, self.pieces, self.fail, self.gate = delay, pieces, fail, gate
        self.calls: list[int] = []
        self.pieces_made = 0
        self.running = threading.Event()

    def report(self) -> WeightReport:
        return WeightReport(self.names, [0.25, 0.75], [2.0, 1.0], "token", "fake-b", "fixed", "product")

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, temperature: float = 0.0,
                 top_p: float = 1.0, stop: Sequence[str] = (), seed: int | None = None) -> list[Any]:
        self.calls.append(len(prompts))
        self.running.set()
        if self.gate is not None:  # held until the test opens it: ordering without timing
            assert self.gate.wait(timeout=60), "the test never opened the gate"
        time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return [Generation(p[::-1][:max_new_tokens], self.report(), "length", min(len(p), max_new_tokens))
                for p in prompts]

    def stream(self, prompt: str, **_: Any) -> FakeStream:
        self.running.set()
        return FakeStream(self, prompt, self.pieces)
