"""FuseLLM on Python code: does the fusion loss beat plain continued training when the teacher is much better?

    python scripts/fusellm_experiment.py --scale cpu --work runs/fusellm-code-cpu --out docs/results/fusellm-code
    python scripts/fusellm_experiment.py --scale gpu --work runs/fusellm-code-gpu --out docs/results/fusellm-code-gpu

The target (SmolLM2-135M) continues training on stdlib Python, the fused teacher built from a source that
is much better on code (Qwen2.5-Coder-0.5B) and the target itself (MinCE per row, as FuseLLM). Variants,
all on the same rows in the same order for a given seed (so every comparison is paired), each trained
with every seed of ``--seeds``:

- ``plain``: ``train.lm_weight=1`` (causal-LM loss only: plain continued training; the teacher is read
  but weighs 0);
- ``mince-<lambda>`` for every lambda of ``--lambdas`` (paper: 0.9; and a lower one, 0.5).

Steps, each resumable (rerun the same command after a kill; finished work is skipped):

1. **corpus** (``<work>/data``): training documents are whole stdlib modules of this machine's Python in a
   fixed pseudo-random order (sha256 of the path) up to ``--train-chars``; held-out documents are windows
   of the Python source of pinned third-party packages (``HELDOUT``, versions pinned in constraints.txt) —
   code no training document comes from. ``manifest.json`` lists every file with its sha256.
2. **shared stages** (``<work>/shared/part-<i>``): extract, align and combine once for all variants, the
   corpus rows cut into ``--parts`` contiguous parts that run in parallel processes (alignment runs on
   one CPU core per process: at GPU scale it would otherwise be the bottleneck).
3. **train** (``<work>/runs/<variant>-s<seed>``): every variant and seed, on the parts' fused rows, with
   the recipe's train settings (``lmfuse.fuse.train.train``; checkpoints every ``train.save_every``).
4. **evaluate**: held-out bits per byte of the original target and of every trained model, per chunk of
   ``--eval-chars`` characters (``<work>/eval.json``, kept model by model).
5. **report** (``--out``): ``report.md``, ``results.json``, ``curves.png``: per run held-out bpb with a
   bootstrap interval, paired differences against plain training with 95 % intervals (per seed and pooled
   over seeds), the seed-to-seed spread, learning curves, tokens trained, CPU and wall seconds per stage,
   and the teacher diagnostics (each candidate's bpb on the training rows, MinCE's picks, alignment
   coverage).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import resource
import sys
import sysconfig
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Any

# Held-out Python: (distribution, file inside it). Original code of pure-Python packages pinned in
# constraints.txt (no copy of a stdlib module: hjson's decoder, a json/decoder.py descendant, is left out).
HELDOUT: tuple[tuple[str, str], ...] = (
    ("attrs", "attr/_make.py"), ("click", "click/core.py"), ("idna", "idna/core.py"),
    ("h11", "h11/_connection.py"), ("PyYAML", "yaml/constructor.py"), ("python-dateutil", "dateutil/rrule.py"),
    ("packaging", "packaging/specifiers.py"), ("cycler", "cycler/__init__.py"), ("dominate", "dominate/tags.py"),
    ("colorama", "colorama/ansitowin32.py"), ("chardet", "chardet/universaldetector.py"),
    ("absl-py", "absl/flags/_flag.py"),
)


@dataclasses.dataclass(frozen=True)
class Scale:
    recipe: str
    train_chars: int
    """Characters of stdlib Python for training (whole modules until the budget; the last one cut)."""
    heldout_file_chars: int
    """Characters of each held-out file (a window of whole lines from a quarter into the file)."""
    eval_chars: int
    """Held-out chunk size: each chunk is scored on its own (the unit of the bootstrap)."""
    parts: int
    precision: str
    """``no`` (float32) or ``bf16`` (ACCELERATE_MIXED_PRECISION for training)."""


SCALES = {
    # ~94k SmolLM2 tokens per run, ~80 optimizer steps; ~4 CPU-hours in all (the pilot's costs, docs/fuse.md).
    "cpu": Scale("recipes/fusellm-code-cpu.yaml", train_chars=300_000, heldout_file_chars=3_000, eval_chars=1_000,
                 parts=1, precision="no"),
    # 100x the CPU run's training tokens (30M characters: nearly all of the stdlib's 31.5M), on one H100 in
    # about 10 minutes; 15 parts keep 15 of the 16 host cores aligning (sizing arithmetic in docs/fuse.md).
    "gpu": Scale("recipes/fusellm-code-gpu.yaml", train_chars=30_000_000, heldout_file_chars=30_000,
                 eval_chars=2_000, parts=15, precision="bf16"),
    "tiny": Scale("recipes/fusellm-code-tiny.yaml", train_chars=3_000, heldout_file_chars=300, eval_chars=200,
                  parts=1, precision="no"),
}
SHARED_STAGES = ("extract", "align", "combine")


# ---- 1. corpus ----------------------------------------------------------------------------------------------

def line_window(text: str, start: int, chars: int) -> str:
    """About ``chars`` characters of ``text`` from the first line start at or after ``start``, whole lines."""
    begin = text.find("\n", start) + 1 if start else 0
    end = text.find("\n", begin + chars)
    return text[begin : len(text) if end < 0 else end + 1]


def stdlib_files() -> list[Path]:
    """Every .py file of the stdlib (site-packages excluded) in a fixed pseudo-random order: sha256 of the
    relative path, so any budget takes a spread of modules, not the alphabet's first ones."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in lib.rglob("*.py") if "site-packages" not in p.relative_to(lib).parts]
    return sorted(files, key=lambda p: hashlib.sha256(str(p.relative_to(lib)).encode()).hexdigest())


def heldout_text(dist: str, path: str) -> tuple[str, str]:
    """(version, source) of ``path`` inside the installed distribution ``dist``."""
    try:
        located = Path(str(metadata.distribution(dist).locate_file(path)))
        return metadata.version(dist), located.read_text(encoding="utf-8")
    except (metadata.PackageNotFoundError, OSError) as exc:
        raise SystemExit(f"held-out file {dist}:{path} is not installed ({exc}); install the versions pinned in "
                         "constraints.txt") from None


def build_corpus(data: Path, scale: Scale) -> dict[str, Any]:
    """Write ``data/train/*.txt`` and ``data/heldout/*.txt`` once; a later call checks the same settings."""
    settings = {"python": platform.python_version(), "train_chars": scale.train_chars,
                "heldout_file_chars": scale.heldout_file_chars}
    manifest_path = data / "manifest.json"
    if manifest_path.is_file():
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        if manifest["settings"] != settings:
            raise SystemExit(f"{data} holds a corpus built with {manifest['settings']}, not {settings}; "
                             "use another --work")
        return manifest
    files: list[dict[str, Any]] = []
    lib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for path in stdlib_files():
        if total >= scale.train_chars:
            break
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a few test files are deliberately not UTF-8
        if not text.strip():
            continue
        text = line_window(text, 0, scale.train_chars - total)  # the last module is cut at a line end
        rel = str(path.relative_to(lib))
        files.append({"file": f"train/{len(files):05d}-{rel.replace('/', '__')}.txt", "source": f"stdlib:{rel}",
                      "text": text})
        total += len(text)
    for dist, rel in HELDOUT:
        version, text = heldout_text(dist, rel)
        window = line_window(text, len(text) // 4, scale.heldout_file_chars)
        files.append({"file": f"heldout/{dist}__{rel.replace('/', '__')}.txt", "source": f"{dist}=={version}:{rel}",
                      "text": window})
    for f in files:
        text = f.pop("text")
        out = data / f["file"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        f.update(chars=len(text), sha256=hashlib.sha256(text.encode()).hexdigest())
    manifest = {"settings": settings, "files": files}
    write_json(manifest_path, manifest)  # last: a corpus with a manifest is complete
    return manifest


def write_json(path: Path, obj: Any) -> None:
    from lmfuse.atomic import write_text

    write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


# ---- timing: CPU seconds of this process and of its finished children (the parallel parts) -------------------

def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Times:
    """Wall and CPU seconds per step, kept in ``path`` (summed over the attempts that finished)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.table: dict[str, dict[str, float]] = json.loads(path.read_text()) if path.is_file() else {}

    def add(self, key: str, wall_s: float, cpu_s: float) -> None:
        """Also records the 1-minute load average when the step ended: other jobs on the machine inflate the
        wall time (CPU time barely moves)."""
        entry = self.table.setdefault(key, {"wall_s": 0.0, "cpu_s": 0.0})
        entry["wall_s"] += wall_s
        entry["cpu_s"] += cpu_s
        entry["load"] = round(os.getloadavg()[0], 2)
        write_json(self.path, self.table)

    @contextmanager
    def measure(self, key: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), cpu_seconds()
        yield
        self.add(key, time.perf_counter() - wall, cpu_seconds() - cpu)


# ---- 2. shared stages -------------------------------------------------------------------------------------------

def shared_part(recipe_path: str, overrides: list[str], progress: bool) -> dict[str, dict[str, float]]:
    """Extract, align and combine one part of the corpus (run in a worker process when there are several)."""
    from lmfuse.fuse.pipeline import Run
    from lmfuse.fuse.recipe import load_recipe

    run = Run(load_recipe(recipe_path, overrides), progress=progress)
    times: dict[str, dict[str, float]] = {}
    for stage in SHARED_STAGES:
        wall, cpu = time.perf_counter(), cpu_seconds()
        run.run((stage,))
        times[stage] = {"wall_s": time.perf_counter() - wall, "cpu_s": cpu_seconds() - cpu}
    return times


def part_overrides(train_dir: Path, num_rows: int, parts: int, shared: Path) -> list[list[str]]:
    """``--set`` overrides of each non-empty part: contiguous rows ``[offset, offset + size)``."""
    size = math.ceil(num_rows / parts)
    return [[f"data.path={train_dir}", f"data.offset={i * size}", f"data.limit={size}",
             f"output_dir={shared / f'part-{i}'}"] for i in range(parts) if i * size < num_rows]


def run_shared(recipe_path: str, overrides: list[list[str]], progress: bool) -> dict[str, dict[str, float]]:
    """All parts (in parallel processes when there are several); per stage the CPU seconds of all parts."""
    if len(overrides) == 1:
        return shared_part(recipe_path, overrides[0], progress)
    # spawn: each worker starts clean (CUDA cannot be re-initialised in a forked process).
    with ProcessPoolExecutor(len(overrides), mp_context=get_context("spawn")) as pool:
        results = list(pool.map(shared_part, [recipe_path] * len(overrides), overrides, [False] * len(overrides)))
    total: dict[str, dict[str, float]] = {}
    for r in results:
        for stage, t in r.items():
            entry = total.setdefault(stage, {"wall_s": 0.0, "cpu_s": 0.0})
            entry["cpu_s"] += t["cpu_s"]
            entry["wall_s"] = max(entry["wall_s"], t["wall_s"])  # the parts ran side by side
    return total


# ---- 3. training ---------------------------------------------------------------------------------------------

def variants(lambdas: list[float]) -> dict[str, list[str]]:
    return {"plain": ["train.lm_weight=1.0"], **{f"mince-{lam:g}": [f"train.lm_weight={lam:g}"] for lam in lambdas}}


def check_settings(recipe_path: str, overrides: list[str], progress: bool = False) -> Any:
    """The pipeline's ``Run`` after a run of no stage: it refuses an output directory whose stages were made
    with other settings (naming them) and writes ``recipe.resolved.yaml``."""
    from lmfuse.fuse.pipeline import Run
    from lmfuse.fuse.recipe import load_recipe

    run = Run(load_recipe(recipe_path, overrides), progress=progress)
    run.run(())
    return run


def train_run(recipe_path: str, overrides: list[str], examples: list[Any], progress: bool) -> Path:
    """Train one variant and seed on the shared fused rows; resumes from its newest checkpoint."""
    from lmfuse.fuse.train import train

    run = check_settings(recipe_path, overrides, progress)
    recipe = run.recipe
    model = run.path("train", "model")
    if (model / "config.json").is_file():
        return model
    return train(run.member(recipe.target), examples, run.path("train"), recipe.train, progress=progress)


# ---- 4. evaluation -----------------------------------------------------------------------------------------------

def heldout_chunks(heldout_dir: Path, eval_chars: int) -> list[tuple[str, str]]:
    """(file, chunk) of every held-out file, in file order."""
    from lmfuse.fuse.corpus import chunk_text

    return [(p.name, c) for p in sorted(heldout_dir.glob("*.txt"))
            for c in chunk_text(p.read_text(encoding="utf-8"), eval_chars) if c.strip()]


def evaluate(model: str, chunks: list[str]) -> dict[str, list[Any]]:
    """Per chunk: NLL in nats (every token, the first one after the prefix token too) and UTF-8 bytes."""
    import torch

    from lmfuse.fuse.dist import process_state
    from lmfuse.fuse.members import resolve_member
    from lmfuse.fuse.recipe import MemberSpec

    member = resolve_member(MemberSpec(model=model, name="evaluated"), device=str(process_state().device),
                            dtype="float32")
    nll: list[float] = []
    n_bytes: list[int] = []
    with torch.inference_mode():
        for chunk in chunks:
            nll.append(-float(member.score_tokens(member.encode(chunk).ids).double().sum()))
            n_bytes.append(len(chunk.encode("utf-8")))
    return {"nll": nll, "bytes": n_bytes}


# ---- 5. report ------------------------------------------------------------------------------------------------

def teacher_diagnostics(part_dirs: list[Path], candidates: list[str]) -> dict[str, Any]:
    """From the shards: each candidate's bits per byte on the training rows, how often MinCE picked it, the
    share of target tokens it covers one-to-one (the rest take the fallback), and the teacher's bpb."""
    import numpy as np

    from lmfuse.fuse import store

    def shards(d: Path) -> list[Any]:
        return [store.read_shard(p) for p in sorted(d.glob("shard-*.safetensors"))]

    def rows(d: Path, key: str) -> np.ndarray:
        return np.concatenate([s.rows[key] for part in part_dirs for s in shards(part / d)])

    nll = {c: rows(Path("extract", c), "nll_sum").astype(np.float64) for c in candidates}
    n_bytes = rows(Path("extract", candidates[0]), "n_bytes").astype(np.float64)
    tokens = {c: sum(s.num_tokens for part in part_dirs for s in shards(part / "extract" / c)) for c in candidates}
    wins = rows(Path("combine"), "weights").argmax(axis=1)
    per_row = np.stack([nll[c] / n_bytes for c in candidates])  # [C, rows] nats per byte
    teacher = per_row[wins, np.arange(len(wins))]
    aligned = {c: float(np.concatenate([s.tokens["aligned"] for part in part_dirs
                                        for s in shards(part / "align" / c)]).mean()) for c in candidates}
    return {"rows": len(wins), "bytes": int(n_bytes.sum()), "tokens": tokens,
            "bpb": {c: float(nll[c].sum() / n_bytes.sum() / math.log(2)) for c in candidates},
            "min_ce_wins": {c: int((wins == i).sum()) for i, c in enumerate(candidates)},
            "teacher_bpb": float((teacher * n_bytes).sum() / n_bytes.sum() / math.log(2)),
            "aligned_share": aligned}


def summarise(evals: dict[str, dict[str, list[Any]]], runs: dict[str, tuple[str, int]],
              seeds: list[int]) -> dict[str, Any]:
    """Held-out bpb per model, paired differences against plain training (same seed, and pooled over seeds)."""
    import numpy as np

    from lmfuse.eval.metrics import bootstrap_ratio_interval, paired_bootstrap_ratio_diff

    bits = {m: np.asarray(e["nll"]) / math.log(2) for m, e in evals.items()}
    n_bytes = np.asarray(next(iter(evals.values()))["bytes"], dtype=np.float64)
    models: dict[str, Any] = {}
    for m, b in bits.items():
        row: dict[str, Any] = {"bpb": float(b.sum() / n_bytes.sum()), "bpb_ci": bootstrap_ratio_interval(b, n_bytes)}
        if m != "original":
            row["vs_original"] = paired_bootstrap_ratio_diff(b, bits["original"], n_bytes)
            variant, seed = runs[m]
            if variant != "plain" and f"plain-s{seed}" in bits:
                row["vs_plain"] = paired_bootstrap_ratio_diff(b, bits[f"plain-s{seed}"], n_bytes)
        models[m] = row
    pooled: dict[str, Any] = {}
    spread: dict[str, Any] = {}
    for variant in sorted({v for v, _ in runs.values()}):
        done = [s for s in seeds if f"{variant}-s{s}" in bits]
        if len(done) >= 2:  # the seed-to-seed spread: the second seed against the first, same chunks
            spread[variant] = paired_bootstrap_ratio_diff(bits[f"{variant}-s{done[1]}"], bits[f"{variant}-s{done[0]}"],
                                                          n_bytes)
        paired = [s for s in done if f"plain-s{s}" in bits]
        if variant != "plain" and paired:  # mean over seeds of the paired difference, chunks resampled jointly
            mean_v = np.mean([bits[f"{variant}-s{s}"] for s in paired], axis=0)
            mean_p = np.mean([bits[f"plain-s{s}"] for s in paired], axis=0)
            pooled[variant] = {"seeds": paired, "vs_plain": paired_bootstrap_ratio_diff(mean_v, mean_p, n_bytes)}
    return {"chunks": len(n_bytes), "bytes": int(n_bytes.sum()), "models": models, "pooled": pooled,
            "seed_spread": spread}


def fmt_diff(d: Any) -> str:
    return "" if d is None else f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]"


def report(results: dict[str, Any]) -> str:
    s, summary, teachers = results["settings"], results["summary"], results["teachers"]
    lines = ["# FuseLLM on Python code: fusion vs plain continued training", "",
             f"Command: `{s['command']}`", "",
             f"Scale `{s['scale']}`: recipe `{s['recipe_path']}`, device {s['device']}, precision {s['precision']}; "
             f"at the start of the call that wrote this report: {s['load']} (per step, at its end: the cost table).", "",
             f"Corpus: {s['train_files']} stdlib modules ({s['train_chars']:,} characters, Python "
             f"{s['python']}), {teachers['rows']} rows; held out: {len(s['heldout_files'])} windows of pinned "
             f"third-party files ({summary['bytes']:,} bytes, {summary['chunks']} chunks of at most "
             f"{s['eval_chars']} characters): " + ", ".join(f"`{h}`" for h in s["heldout_files"]) + ".", "",
             "## Held-out bits per byte", "",
             "| model | seed | trained tokens | steps | held-out bpb [95% CI] | Δ vs plain, same seed | Δ vs original |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m, row in summary["models"].items():
        run = results["runs"].get(m, {})
        lines.append(f"| {run.get('variant', m)} | {run.get('seed', '')} | {run.get('tokens') or ''} "
                     f"| {run.get('steps') or ''} | {row['bpb']:.4f} [{row['bpb_ci'][0]:.4f}, {row['bpb_ci'][1]:.4f}] "
                     f"| {fmt_diff(row.get('vs_plain'))} | {fmt_diff(row.get('vs_original'))} |")
    lines += ["", "Δ: difference of bits per byte over the same chunks (negative = better), with a paired "
              "bootstrap 95% interval over chunks (2,000 resamples).", "",
              "| variant | Δ bpb vs plain, mean over seeds [95% CI] | seeds | seed-to-seed spread (2nd − 1st seed) |",
              "|---|---:|---|---:|"]
    for variant in sorted({r["variant"] for r in results["runs"].values()}):
        pooled = summary["pooled"].get(variant)
        lines.append(f"| {variant} | {fmt_diff(pooled['vs_plain']) if pooled else ''} "
                     f"| {', '.join(map(str, pooled['seeds'])) if pooled else ''} "
                     f"| {fmt_diff(summary['seed_spread'].get(variant))} |")
    lines += ["", "## Training losses", "",
              "Mean over the steps of each loss term (nats per target token); the fusion term (cross-entropy "
              "against the fused teacher) is computed for plain training too, where it weighs 0. At a one-hot "
              "fallback (a target token the source does not align 1:1) the teacher is the label and the two terms "
              "are equal; in rows where MinCE picked the target, the teacher is the target's own original top-k.",
              "",
              "| run | steps | CLM | fusion | fusion − CLM | CLM, last 10 % of steps |", "|---|---:|---:|---:|---:|---:|"]
    for name, log in results["train_logs"].items():
        if log:
            clm, fusion = (sum(r[k] for r in log) / len(log) for k in ("clm", "fusion"))
            tail = log[-max(1, len(log) // 10):]
            lines.append(f"| {name} | {len(log)} | {clm:.4f} | {fusion:.4f} | {fusion - clm:+.4f} "
                         f"| {sum(r['clm'] for r in tail) / len(tail):.4f} |")
    cands = list(teachers["bpb"])
    lines += ["", "## The teacher on the training rows", "",
              "| candidate | bpb on training rows | MinCE picks (rows) | target tokens aligned 1:1 | tokens |",
              "|---|---:|---:|---:|---:|"]
    for c in cands:
        lines.append(f"| {c} | {teachers['bpb'][c]:.4f} | {teachers['min_ce_wins'][c]} "
                     f"| {teachers['aligned_share'][c]:.1%} | {teachers['tokens'][c]:,} |")
    lines += ["", f"MinCE teacher (the picked candidate per row): {teachers['teacher_bpb']:.4f} bpb; target alone "
              f"{teachers['bpb'][cands[0]]:.4f}.", "", "## Cost", "",
              "| step | wall s | CPU s | tokens | CPU s per 1k tokens | load average at its end |",
              "|---|---:|---:|---:|---:|---:|"]
    for key, t in results["times"].items():
        tokens = results["stage_tokens"].get(key)
        per_k = f"{t['cpu_s'] / tokens * 1000:.1f}" if tokens else ""
        lines.append(f"| {key} | {t['wall_s']:.0f} | {t['cpu_s']:.0f} | {tokens or ''} | {per_k} | {t.get('load', '')} |")
    lines += ["", "Shared stages count every member's tokens (extract) or the target's (align, combine); "
              "train the tokens the run trained on; evaluation the held-out tokens are not counted. Time "
              "spent in an attempt that was killed is not counted.", "",
              "![learning curves and held-out bpb](curves.png)", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], logs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Training CLM loss per step; its paired gap to plain training (same rows at every step, so the rows'
    own difficulty cancels), running mean; held-out bpb per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax_loss, ax_gap, ax_bpb) = plt.subplots(1, 3, figsize=(16, 4.5))
    runs = results["runs"]
    colour = {v: f"C{i}" for i, v in enumerate(sorted({r["variant"] for r in runs.values()}))}
    first_seed = results["settings"]["seeds"][0]
    for name, log in logs.items():
        if not log:
            continue
        run = runs[name]
        style = {"color": colour[run["variant"]], "linestyle": "-" if run["seed"] == first_seed else "--", "label": name}
        steps = np.asarray([r["step"] for r in log])
        clm = np.asarray([r["clm"] for r in log])
        width = max(1, min(10, len(clm) // 5))  # short runs (a pilot) are drawn as they are
        ax_loss.plot(steps[width - 1:], np.convolve(clm, np.ones(width) / width, mode="valid"), **style)
        plain = logs.get(f"plain-s{run['seed']}")
        if run["variant"] != "plain" and plain and len(plain) == len(log):
            gap = clm - np.asarray([r["clm"] for r in plain])
            ax_gap.plot(steps, np.cumsum(gap) / np.arange(1, len(gap) + 1), **style)
    ax_loss.set(xlabel="optimizer step", ylabel="training CLM loss (nats/token)",
                title="Learning curves (moving mean of up to 10 steps)")
    ax_gap.axhline(0, color="grey", linewidth=0.8)
    ax_gap.set(xlabel="optimizer step", ylabel="CLM loss − plain's (nats/token)",
               title="Paired gap to plain training, running mean")
    for ax in (ax_loss, ax_gap):
        ax.legend(fontsize=7)
    names = list(results["summary"]["models"])
    for i, name in enumerate(names):
        row = results["summary"]["models"][name]
        c = colour.get(runs.get(name, {}).get("variant", ""), "grey")
        ax_bpb.errorbar(i, row["bpb"], yerr=[[row["bpb"] - row["bpb_ci"][0]], [row["bpb_ci"][1] - row["bpb"]]],
                        fmt="o", color=c, capsize=3)
    ax_bpb.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax_bpb.set(ylabel="held-out bits per byte (95% CI)", title="Held-out Python")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- driver ---------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=SCALES, default="cpu", help="preset of the settings below")
    parser.add_argument("--recipe", help="recipe YAML (default: the scale's)")
    parser.add_argument("--work", type=Path, required=True, help="directory for corpus, stages, runs (resumable)")
    parser.add_argument("--out", type=Path, required=True, help="directory for report.md, results.json, curves.png")
    parser.add_argument("--set", action="append", default=[], help="recipe override for every stage and run")
    parser.add_argument("--seeds", default="1,2", help="train.seed of each run: the data order (paired by seed)")
    parser.add_argument("--lambdas", default="0.9,0.5", help="lm_weight of the MinCE variants (paper: 0.9)")
    parser.add_argument("--train-chars", type=int, help="stdlib characters for training")
    parser.add_argument("--heldout-file-chars", type=int, help="characters of each held-out file")
    parser.add_argument("--eval-chars", type=int, help="characters per held-out chunk")
    parser.add_argument("--parts", type=int, help="parallel processes for extract / align / combine")
    parser.add_argument("--precision", choices=("no", "bf16"), help="training precision (accelerate)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained side by side, each in its own process (CPU: one per core)")
    parser.add_argument("--until", choices=("corpus", "shared", "train", "report"), default="report",
                        help="stop after this step (a pilot of the shared stages, say)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    preset = SCALES[args.scale]
    scale = dataclasses.replace(preset, **{k: v for k, v in {
        "recipe": args.recipe, "train_chars": args.train_chars, "heldout_file_chars": args.heldout_file_chars,
        "eval_chars": args.eval_chars, "parts": args.parts, "precision": args.precision}.items() if v is not None})
    seeds = [int(s) for s in args.seeds.split(",") if s]
    lambdas = [float(x) for x in args.lambdas.split(",") if x]
    if len(seeds) != len(set(seeds)) or not seeds or scale.parts < 1 or args.jobs < 1:
        parser.error(f"--seeds needs distinct seeds (got {args.seeds!r}), --parts and --jobs at least 1 "
                     f"(got {scale.parts} and {args.jobs})")
    # Before accelerate reads it: float32 master weights, bfloat16 autocast in the forward passes.
    os.environ["ACCELERATE_MIXED_PRECISION"] = scale.precision
    progress = not args.quiet
    work = args.work.resolve()
    load = os.getloadavg()
    started = time.perf_counter()

    manifest = build_corpus(work / "data", scale)
    if args.until == "corpus":
        return 0
    times = Times(work / "times.json")
    part_dirs = shared_stages(work, scale, args.set, times, progress)
    if args.until == "shared":
        return 0
    runs = {f"{variant}-s{seed}": (variant, seed) for seed in seeds for variant in variants(lambdas)}
    models = train_all(work, scale, args.set, runs, lambdas, part_dirs, times, progress, args.jobs)
    if args.until == "train":
        return 0
    from lmfuse.fuse.recipe import load_recipe

    recipe = load_recipe(scale.recipe, args.set)
    chunks = heldout_chunks(work / "data" / "heldout", scale.eval_chars)
    evals = evaluate_all(work / "eval.json", {"original": recipe.target.model, **{n: str(m) for n, m in models.items()}},
                         [c for _, c in chunks], times)
    command = " ".join(["python", *(sys.argv if argv is None else ["scripts/fusellm_experiment.py", *argv])])
    settings = {"command": command, "scale": args.scale, "recipe_path": scale.recipe,
                "scale_settings": dataclasses.asdict(scale), "overrides": args.set, "seeds": seeds, "lambdas": lambdas,
                "variants": variants(lambdas), "precision": scale.precision, "jobs": args.jobs, "python": platform.python_version(),
                "load": f"load average {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} on {os.cpu_count()} CPUs",
                "eval_chars": scale.eval_chars, "wall_seconds_this_call": time.perf_counter() - started}
    results = collect(settings, manifest, recipe, part_dirs, runs, models, evals, [f for f, _ in chunks], times)
    write_report(results, args.out)
    return 0


def shared_stages(work: Path, scale: Scale, overrides: list[str], times: Times, progress: bool) -> list[Path]:
    """Extract, align and combine every part once (finished parts are only checked); their directories."""
    from lmfuse.fuse.corpus import corpus_rows
    from lmfuse.fuse.recipe import load_recipe

    train_dir = work / "data" / "train"
    num_rows = len(corpus_rows(train_dir, max_chars=load_recipe(scale.recipe, overrides).data.max_chars))
    parts = part_overrides(train_dir, num_rows, scale.parts, work / "shared")
    part_dirs = [Path(p[-1].split("=", 1)[1]) for p in parts]
    part_recipes = [[*overrides, *p] for p in parts]
    if all((d / "combine" / "manifest.json").is_file() for d in part_dirs):
        for part in part_recipes:  # finished: only refuse settings that differ from those they were made with
            check_settings(scale.recipe, part)
    else:
        for stage, t in run_shared(scale.recipe, part_recipes, progress).items():
            times.add(stage, t["wall_s"], t["cpu_s"])
    return part_dirs


def train_all(work: Path, scale: Scale, overrides: list[str], runs: dict[str, tuple[str, int]], lambdas: list[float],
              part_dirs: list[Path], times: Times, progress: bool, jobs: int = 1) -> dict[str, Path]:
    """Every run, ``jobs`` at a time (seed-major: a stopped experiment has complete pairs for its first seeds).

    Training calls the stage function on the parts' fused rows concatenated (``Run`` trains on one combine
    directory); ``check_settings`` still refuses a run directory made with other settings. With several
    jobs each run trains in its own process on ``cpu_count // jobs`` threads (a run's result does not
    depend on which process trains it: its seed fixes the data order and the initialisation is the target's)."""
    models: dict[str, Path] = {}
    pending: dict[str, list[str]] = {}
    for name, (variant, seed) in runs.items():
        out = work / "runs" / name
        run_overrides = [*overrides, f"data.path={work / 'data' / 'train'}", *variants(lambdas)[variant],
                         f"train.seed={seed}", f"output_dir={out}"]
        if (out / "train" / "model" / "config.json").is_file():
            check_settings(scale.recipe, run_overrides)
            models[name] = out / "train" / "model"
        else:
            pending[name] = run_overrides
    def record(name: str, result: tuple[Path, float, float]) -> None:
        models[name], wall_s, cpu_s = result
        times.add(f"train {name}", wall_s, cpu_s)
        print(f"[{name}] trained -> {models[name]}", flush=True)

    if jobs == 1 or len(pending) <= 1:
        for name, o in pending.items():
            record(name, train_worker(scale.recipe, o, part_dirs, 0, progress))
        return models
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = {name: pool.submit(train_worker, scale.recipe, o, part_dirs, threads, False)
                   for name, o in pending.items()}
        for name, future in futures.items():  # in submission order: times.json stays seed-major
            record(name, future.result())
    return models


def train_worker(recipe_path: str, overrides: list[str], part_dirs: list[Path], threads: int,
                 progress: bool) -> tuple[Path, float, float]:
    """One run (in a worker process when ``threads`` is set): its model directory, wall and CPU seconds."""
    import torch

    from lmfuse.fuse.train import load_fused

    if threads:
        torch.set_num_threads(threads)
    wall, cpu = time.perf_counter(), cpu_seconds()
    examples = [(row,) for d in part_dirs for row in load_fused(d / "combine")]
    model = train_run(recipe_path, overrides, examples, progress)
    return model, time.perf_counter() - wall, cpu_seconds() - cpu


def evaluate_all(path: Path, models: dict[str, str], chunks: list[str], times: Times) -> dict[str, dict[str, list[Any]]]:
    """Every model's per-chunk NLL and bytes, kept in ``path`` model by model (a rerun skips finished ones)."""
    evals: dict[str, dict[str, list[Any]]] = json.loads(path.read_text()) if path.is_file() else {}
    for name, spec in models.items():
        if name not in evals:
            with times.measure(f"eval {name}"):
                evals[name] = evaluate(spec, chunks)
            write_json(path, evals)
            bpb = sum(evals[name]["nll"]) / sum(evals[name]["bytes"]) / math.log(2)
            print(f"[{name}] held-out bpb {bpb:.4f}", flush=True)
    return evals


def collect(settings: dict[str, Any], manifest: dict[str, Any], recipe: Any, part_dirs: list[Path],
            runs: dict[str, tuple[str, int]], models: dict[str, Path], evals: dict[str, dict[str, list[Any]]],
            chunk_files: list[str], times: Times) -> dict[str, Any]:
    """Everything the report shows, and the raw numbers behind it (``results.json``)."""
    import yaml

    from lmfuse.fuse.dist import process_state
    from lmfuse.fuse.train import read_train_log, trained_tokens

    logs = {name: read_train_log(models[name].parent / "train_log.jsonl") for name in runs}
    candidates = [recipe.target.slug, *(s.slug for s in recipe.sources)]
    teachers = teacher_diagnostics(part_dirs, candidates)
    run_rows = {name: {"variant": v, "seed": s, "tokens": trained_tokens(models[name].parent / "train_log.jsonl"),
                       "steps": logs[name][-1]["step"] if logs[name] else None} for name, (v, s) in runs.items()}
    target_tokens = teachers["tokens"][candidates[0]]
    stage_tokens = {"extract": sum(teachers["tokens"].values()), "align": target_tokens, "combine": target_tokens,
                    **{f"train {n}": r["tokens"] for n, r in run_rows.items()}}
    train_files = [f for f in manifest["files"] if f["file"].startswith("train/")]
    settings = {**settings, "device": str(process_state().device), "train_files": len(train_files),
                "train_chars": sum(f["chars"] for f in train_files),
                "heldout_files": [f["source"] for f in manifest["files"] if f["file"].startswith("heldout/")],
                "recipe": yaml.safe_load((part_dirs[0] / "recipe.resolved.yaml").read_text())}
    return {"settings": settings, "summary": summarise(evals, runs, list(dict.fromkeys(s for _, s in runs.values()))),
            "runs": run_rows, "teachers": teachers, "times": times.table, "stage_tokens": stage_tokens,
            "corpus": manifest, "train_logs": logs, "per_chunk": {"files": chunk_files, **evals}}


def write_report(results: dict[str, Any], out: Path) -> None:
    from lmfuse.atomic import write_text

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    text = report(results)
    write_text(out / "report.md", text)
    plot(results, results["train_logs"], out / "curves.png")
    print(text)

if __name__ == "__main__":
    raise SystemExit(main())
