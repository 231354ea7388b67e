"""Load test of `lmfuse serve` on loopback: N concurrent clients for a fixed time, batched vs one at a time.

    python benchmarks/serve.py                       # toy pack (3 tokenizer families), 8 clients, 10 s per mode
    python benchmarks/serve.py --clients 16 --seconds 20 --max-tokens 16
    python benchmarks/serve.py --model smollm2 --model gemma3 --seconds 30   # a real pack (installed models)
    python benchmarks/serve.py --sleep-pack 0.05      # synthetic: a decoding step costs 0.05 s for 1 or N prompts

``--sleep-pack`` replaces the pack by a stand-in whose decoding step costs the same for one prompt as for a
batch: it measures the server's queueing and continuous batching on their own, without the pack's cost.

Each mode starts its own server in this process (127.0.0.1, free port) on the same pack, warms it with
one request, then runs ``--clients`` threads that each send greedy completions back to back until the
time is up (and at most ``--max-requests`` in all). It prints one row per mode (throughput, tokens/s,
p50/p95/p99 latency, errors, mean number of prompts per decoding step) and the batched / one-at-a-time
ratios.
Nothing is asserted: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from lmfuse.serve import ServeConfig, ServerThread

PROMPTS = ["The cat sat on the", "def quicksort(xs):", "Once upon a time", "In 1905, Einstein",
           "The capital of France is", "import numpy as np", "Dear Sir or Madam,", "To be or not to be"]


@dataclass
class Result:
    mode: str
    max_batch: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0
    batches: list[int] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        lat = sorted(self.latencies) or [float("nan")]
        return {"mode": self.mode, "max_batch": self.max_batch, "requests": len(self.latencies),
                "errors": self.errors, "req/s": len(self.latencies) / self.seconds,
                "tok/s": self.tokens / self.seconds, "p50 ms": 1000 * statistics.median(lat),
                "p95 ms": 1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))],
                "p99 ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
                "mean batch": statistics.fmean(self.batches) if self.batches else 0.0}


def toy_pack(weighting: str) -> Any:
    from lmfuse.ensemble.pack import Pack
    from lmfuse.models.toy import toy_member

    members = [toy_member("bytebpe", "gpt2", 0), toy_member("sentencepiece", "llama", 1),
               toy_member("wordpiece", "llama", 2)]
    return Pack(members, weighting=weighting)


class SleepPack:
    """Stand-in pack: every decoding step sleeps ``cost`` seconds whatever the number of prompts in it."""

    def __init__(self, cost: float) -> None:
        self.cost, self.names = cost, ["sleep-a", "sleep-b"]

    def decoder(self) -> Any:
        return SleepDecoder(self.cost)

    def decoding(self, prompt: str, max_new_tokens: int = 16, **_: Any) -> Any:
        return SleepDecoding(self.names, max_new_tokens)


@dataclass
class SleepDecoding:
    names: list[str]
    left: int
    text: str = ""
    n_tokens: int = 0
    finish_reason: str | None = None
    done: bool = False
    error: BaseException | None = None
    pieces: list[str] = field(default_factory=list)
    weights: Any = None

    @property
    def started(self) -> bool:
        return self.weights is not None

    def advance(self) -> None:
        from lmfuse.ensemble.weighting import WeightReport

        if self.weights is None:
            self.weights = WeightReport(self.names, [0.5, 0.5], [1.0, 1.0], "token", "sleep-a", "uniform", "product")
            return
        self.text, self.n_tokens, self.left = self.text + "x", self.n_tokens + 1, self.left - 1
        self.pieces.append("x")
        if self.left == 0:
            self.done, self.finish_reason = True, "length"


class SleepDecoder:
    def __init__(self, cost: float) -> None:
        self.cost = cost
        self.live: list[SleepDecoding] = []

    def add(self, d: SleepDecoding) -> None:
        self.live.append(d)

    def drop(self, d: SleepDecoding) -> None:
        self.live.remove(d)

    def step(self) -> list[SleepDecoding]:
        time.sleep(self.cost)
        for d in self.live:
            d.advance()
        done = [d for d in self.live if d.done]
        self.live = [d for d in self.live if not d.done]
        return done


def run_mode(pack: Any, mode: str, max_batch: int, args: argparse.Namespace) -> Result:
    config = ServeConfig(port=0, max_batch=max_batch, max_pending=max(64, args.clients * 2),
                         max_tokens_limit=max(64, args.max_tokens))
    result = Result(mode, max_batch)
    lock = threading.Lock()
    sent = [0]
    server = ServerThread(pack, config)
    with server as url:
        body = {"model": config.model_name, "max_tokens": args.max_tokens, "temperature": 0}
        httpx.post(f"{url}/v1/completions", json={**body, "prompt": "warm up"}, timeout=600).raise_for_status()
        warm_steps = len(server.app.state.batcher.batches)
        deadline = time.perf_counter() + args.seconds

        def client(i: int) -> None:
            with httpx.Client(timeout=600) as http:
                j = 0
                while time.perf_counter() < deadline:
                    with lock:
                        if sent[0] >= args.max_requests:
                            return
                        sent[0] += 1
                    prompt = PROMPTS[(i + j) % len(PROMPTS)]
                    j += 1
                    t0 = time.perf_counter()
                    try:
                        r = http.post(f"{url}/v1/completions", json={**body, "prompt": prompt})
                        ok = r.status_code == 200
                        n = r.json()["usage"]["completion_tokens"] if ok else 0
                    except httpx.HTTPError:
                        ok, n = False, 0
                    dt = time.perf_counter() - t0
                    with lock:
                        if ok:
                            result.latencies.append(dt)
                            result.tokens += n
                        else:
                            result.errors += 1

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result.seconds = time.perf_counter() - t0
        result.batches = list(server.app.state.batcher.batches)[warm_steps:]  # not the warm-up's steps
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="per mode")
    parser.add_argument("--max-requests", type=int, default=2000, help="per mode, a bound on the run")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8, help="max_batch of the batched mode")
    parser.add_argument("--weighting", default="packllm-opt")
    parser.add_argument("--model", action="append", default=[], help="real members instead of the toy pack")
    parser.add_argument("--sleep-pack", type=float, metavar="SECONDS",
                        help="synthetic pack: each generate call costs SECONDS for any batch size")
    args = parser.parse_args()
    pack: Any
    if args.sleep_pack is not None:
        pack = SleepPack(args.sleep_pack)
    elif args.model:
        from lmfuse.ensemble.pack import Pack

        pack = Pack.load(members=args.model, weighting=args.weighting)
    else:
        pack = toy_pack(args.weighting)
    label = "synthetic" if args.sleep_pack is not None else args.weighting
    print(f"pack: {', '.join(pack.names)} ({label}); {args.clients} clients, {args.seconds:g} s per mode, "
          f"max_tokens {args.max_tokens}, greedy")
    results = [run_mode(pack, "one at a time", 1, args), run_mode(pack, "batched", args.batch, args)]
    rows = [r.row() for r in results]
    cols = list(rows[0])
    print(" | ".join(f"{c:>13}" for c in cols))
    for row in rows:
        print(" | ".join(f"{v:>13.1f}" if isinstance(v, float) else f"{v!s:>13}" for v in row.values()))
    one, batched = rows
    print(f"batched / one-at-a-time: throughput x{batched['req/s'] / one['req/s']:.2f}, "
          f"p50 latency x{batched['p50 ms'] / one['p50 ms']:.2f}, p95 latency x{batched['p95 ms'] / one['p95 ms']:.2f}, p99 latency x{batched['p99 ms'] / one['p99 ms']:.2f}")


if __name__ == "__main__":
    main()
