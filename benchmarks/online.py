"""Causal bits per byte of the pack's weightings on texts: packllm-opt and online at several rates, each
member.

    python benchmarks/online.py --role dev                 # choose the online rate (development texts)
    python benchmarks/online.py --role held-out --rates 0.01   # report it on texts the rate never saw
    python benchmarks/online.py --texts "shakespeare:macbeth[5000:13000],stdlib:textwrap.py" --rates 0.001,0.01

Causal: chunk i of a text (about 2,000 characters, as `lmfuse eval` cuts them) is scored with weights fitted
on chunk i-1 only (its last ``fit_bytes`` bytes, read with that chunk's own context), so every figure is
what generation would get; chunk 0 only provides the first fit. ``online`` starts from those weights and
updates them after every byte of chunk i (`lmfuse.ensemble.weighting.follow`), at each ``--rates`` step. Every member reads every
chunk once; all strategies and rates are computed from the same passes. Prints, per text, bits per byte
of each system with a 95% bootstrap interval over chunks, and each fused system's paired difference in
bits per chunk-byte from the best member and from packllm-opt. Resumable: each chunk's per-system log-probs
go to ``--out`` (JSON lines) as they are computed, and a rerun skips the chunks already there.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from lmfuse.ensemble import Pack
from lmfuse.ensemble.runs import read_text
from lmfuse.ensemble.weighting import follow, fused
from lmfuse.eval import metrics
from lmfuse.eval.tasks import TextTask, load_task

# Development texts choose the rate; held-out texts (the README main job's) only report it.
TEXTS = {"dev": ["shakespeare:macbeth[5000:13000]", "stdlib:textwrap.py[0:12000]"],
         "held-out": ["shakespeare:hamlet[5000:13000]", "stdlib:json/decoder.py"]}
RATES = [0.003, 0.01, 0.03, 0.1]


def chunk_scores(pack: Pack, previous: str, chunk: str, rates: list[float], window: int) -> dict[str, float]:
    """Natural-log probability of ``chunk`` per system, weights fitted on ``previous``."""
    runs = [read_text(m, chunk, window) for m in pack.members]
    out = {m.name: float(r.token_logprobs.sum()) for m, r in zip(pack.members, runs, strict=True)}
    problem = pack.byte_problem(chunk, runs, (0, len(chunk.encode("utf-8"))), pack.analyse(chunk, runs).nll)
    before = pack.analyse(previous, [read_text(m, previous, window) for m in pack.members])
    start, _ = pack.fit(before, "packllm-opt")
    log_probs, targets, present = problem.log_probs, problem.targets, problem.present
    assert log_probs is not None and targets is not None and present is not None

    def total(weights: torch.Tensor) -> float:
        lp = fused(log_probs, weights, present, problem.fusion)
        return float(lp.gather(-1, targets[:, None]).sum())

    out["pack[packllm-opt]"] = total(start)
    for rate in rates:
        out[f"pack[online {rate:g}]"] = total(follow(start, log_probs, targets, present, rate,
                                                     problem.fusion))
    return out


def report(name: str, rows: list[dict[str, float]], n_bytes: list[int]) -> None:
    systems = list(rows[0])
    members = [s for s in systems if not s.startswith("pack[")]
    bits = {s: [-r[s] / math.log(2) for r in rows] for s in systems}
    bpb = {s: sum(bits[s]) / sum(n_bytes) for s in systems}
    best = min(members, key=bpb.__getitem__)
    print(f"\n### {name} ({len(rows)} chunks scored, {sum(n_bytes):,} bytes; best member {best})\n")
    print("| system | bpb [95% CI] | x best member | diff vs best member [95% CI] | diff vs packllm-opt [95% CI] |")
    print("|---|---|---|---|---|")
    for s in systems:
        lo, hi = metrics.bootstrap_ratio_interval(bits[s], n_bytes)
        per = [b / n for b, n in zip(bits[s], n_bytes, strict=True)]
        cells = []
        for ref in (best, "pack[packllm-opt]"):
            d, dlo, dhi = metrics.paired_bootstrap_diff(per, [b / n for b, n in zip(bits[ref], n_bytes, strict=True)])
            cells.append(f"{d:+.4f} [{dlo:+.4f}, {dhi:+.4f}]" if s != ref else "")
        print(f"| {s} | {bpb[s]:.4f} [{lo:.4f}, {hi:.4f}] | {bpb[s] / bpb[best]:.3f} | {cells[0]} | {cells[1]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=list(TEXTS), default="dev")
    parser.add_argument("--texts", help="comma-separated text tasks instead of the role's")
    parser.add_argument("--rates", default=",".join(f"{r:g}" for r in RATES))
    parser.add_argument("--window", type=int, default=1024, help="rolling-window tokens per member read")
    parser.add_argument("--out", type=Path, default=Path("out/online"), help="directory for the per-chunk JSONL")
    args = parser.parse_args()
    texts = args.texts.split(",") if args.texts else TEXTS[args.role]
    rates = [float(r) for r in args.rates.split(",")]
    pack = Pack.load()
    print(f"pack {', '.join(pack.names)}; rates {rates}; causal (fit on the chunk before)")
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in texts:
        task = load_task(spec)
        assert isinstance(task, TextTask), f"{spec} is not a text task"
        chunks = task.chunks
        path = args.out / (spec.replace("/", "_").replace(":", "_") + ".jsonl")
        done = {json.loads(line)["chunk"]: json.loads(line) for line in path.open()} if path.exists() else {}
        rows, n_bytes = [], []
        for i in range(1, len(chunks)):
            if i not in done or any(k not in done[i]["scores"] for k in [f"pack[online {r:g}]" for r in rates]):
                t0 = time.perf_counter()
                done[i] = {"chunk": i, "bytes": len(chunks[i].encode("utf-8")),
                           "scores": chunk_scores(pack, chunks[i - 1], chunks[i], rates, args.window)}
                with path.open("a") as f:
                    f.write(json.dumps(done[i]) + "\n")
                print(f"  {spec} chunk {i}/{len(chunks) - 1}: {time.perf_counter() - t0:.1f} s", flush=True)
            keep = ["pack[packllm-opt]", *(f"pack[online {r:g}]" for r in rates)]
            scores = done[i]["scores"]
            rows.append({k: v for k, v in scores.items() if not k.startswith("pack[") or k in keep})
            n_bytes.append(done[i]["bytes"])
        report(spec, rows, n_bytes)


if __name__ == "__main__":
    main()
