"""Queueing and continuous batching: concurrent requests share decoding steps, the queue limit answers 429, a client that
leaves frees its slot, and the event loop stays free while the pack works."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from lmfuse.serve import ServeConfig, ServerThread

from .helpers import MODEL, SlowPack, client


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def pending(url: str) -> int:
    return int(httpx.get(f"{url}/health").json()["pending"])


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer() -> None:
    gate = threading.Event()
    pack = SlowPack(gate=gate)
    prompts = [f"prompt number {i}" for i in range(7)]
    with ServerThread(pack, ServeConfig(port=0, max_batch=8)) as url, ThreadPoolExecutor(len(prompts)) as pool:
        answers = pool.map(lambda p: client(url).completions.create(
            model=MODEL, prompt=p, max_tokens=64, temperature=0).choices[0].text, prompts)
        wait_for(lambda: pending(url) == len(prompts))  # the first batch in the pack (held), the rest queued
        gate.set()
        texts = list(answers)
    assert texts == [p[::-1] for p in prompts]
    assert sum(pack.calls) == len(prompts)
    assert len(pack.calls) <= 2, pack.calls  # whatever queued behind the held call went in together


def test_one_at_a_time_when_max_batch_is_1() -> None:
    pack = SlowPack(delay=0.05)
    with ServerThread(pack, ServeConfig(port=0, max_batch=1)) as url, ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: client(url).completions.create(model=MODEL, prompt=f"p{i}", temperature=0),
                      range(4)))
    assert pack.calls == [1, 1, 1, 1]


def test_sampled_requests_with_their_own_seeds_share_a_step() -> None:
    """Each prompt samples with its own seed, so requests with any parameters decode together."""
    gate = threading.Event()
    pack = SlowPack(gate=gate)
    with ServerThread(pack, ServeConfig(port=0, max_batch=8)) as url, ThreadPoolExecutor(4) as pool:
        c = client(url)
        first = pool.submit(c.completions.create, model=MODEL, prompt="busy", temperature=0)
        wait_for(pack.running.is_set)
        sampled = [pool.submit(c.completions.create, model=MODEL, prompt="x", temperature=1.0, seed=s, max_tokens=3)
                   for s in range(3)]
        wait_for(lambda: pending(url) == 4)  # all three wait in the queue together
        gate.set()
        for f in [first, *sampled]:
            f.result()
    assert pack.calls == [1, 3]  # the three joined the running one at its next step


def test_queue_limit_answers_429() -> None:
    gate = threading.Event()
    pack = SlowPack(gate=gate)
    with ServerThread(pack, ServeConfig(port=0, max_pending=1)) as url:
        busy = threading.Thread(target=lambda: client(url).completions.create(model=MODEL, prompt="slow"))
        busy.start()
        wait_for(pack.running.is_set)
        with pytest.raises(openai.RateLimitError) as e:
            client(url).completions.create(model=MODEL, prompt="too many")
        assert e.value.body["code"] == "queue_full"  # type: ignore[index]
        gate.set()
        busy.join()
        assert client(url).completions.create(model=MODEL, prompt="now").choices[0].text == "won"


def test_a_stream_whose_client_leaves_frees_its_slot_and_stops_decoding() -> None:
    pack = SlowPack(delay=0.05, pieces=200)
    with ServerThread(pack, ServeConfig(port=0, max_pending=1)) as url:
        body = {"model": MODEL, "prompt": "long", "stream": True, "max_tokens": 500}
        with httpx.stream("POST", f"{url}/v1/completions", json=body) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
        wait_for(lambda: pending(url) == 0)
        made = pack.pieces_made
        assert made < 200
        time.sleep(0.3)
        assert pack.pieces_made <= made + 1  # decoding stopped at the next piece
        assert client(url).completions.create(model=MODEL, prompt="ok", max_tokens=2).choices[0].text == "xx"


def test_a_waiting_client_that_leaves_frees_its_slot() -> None:
    gate = threading.Event()
    pack = SlowPack(gate=gate)
    with ServerThread(pack, ServeConfig(port=0, max_pending=2, max_batch=1)) as url:
        busy = threading.Thread(target=lambda: client(url).completions.create(model=MODEL, prompt="slow"))
        busy.start()
        wait_for(pack.running.is_set)
        with pytest.raises(httpx.ReadTimeout):  # queued behind "slow", then gives up
            httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "impatient"}, timeout=0.3)
        wait_for(lambda: pending(url) == 1)
        gate.set()
        busy.join()
        wait_for(lambda: pending(url) == 0)
    assert pack.calls == [1]  # the abandoned request never reached the pack


def test_the_event_loop_is_free_while_the_pack_works() -> None:
    gate = threading.Event()
    pack = SlowPack(gate=gate)
    with ServerThread(pack, ServeConfig(port=0)) as url:
        busy = threading.Thread(target=lambda: client(url).completions.create(model=MODEL, prompt="slow"))
        busy.start()
        wait_for(pack.running.is_set)
        # The pack thread is blocked until the gate opens: /health can only answer if the loop is free.
        assert httpx.get(f"{url}/health", timeout=10).json()["pending"] == 1
        gate.set()
        busy.join()
