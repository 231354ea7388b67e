"""The ProFuser experiment on real models: one recipe, five trained variants, one held-out evaluation.

    python scripts/profuser_experiment.py recipes/profuser-smollm2.yaml --work runs/profuser-exp \\
        --out docs/results/profuser-smollm2 --set data.limit=32 --set generate.max_new_tokens=128

Variants, all from the recipe with only the schedule (and, for SFT, lambda) changed, so each trains the
same optimizer steps on the same examples (`train.epochs` passes):

- ``sft``: references only (``schedule.name=train-only``, ``train.lm_weight=1``, no fusion loss);
- ``fusellm``: training mode only (FuseLLM's MinCE teacher);
- ``profuser``: inference mode, then training mode (the paper's two stages);
- ``simul`` and ``reverse``: the paper's ablation orders.

ProFuser runs first and its generate / reward / extract / align / combine stages are shared: the other
variants' work directories start from copies, so only their train stage runs (the pipeline skips
finished stages). Every step resumes: rerun the same command after a kill.

Held-out evaluation of the original target and each variant on the recipe's first ``--held-out``
examples (the recipe's ``data.offset`` keeps them out of training):

- **response bits per byte**: teacher-forced NLL of the reference response after the target's chat
  template, per UTF-8 byte of the response, with a bootstrap interval (ratio of sums over examples);
- **exact match**: greedy reply of at most ``--max-new-tokens``, its final answer against the
  reference's (``lmfuse.fuse.rewards.final_answer``), with a Wilson interval.

Paired differences against the original and against SFT use the same examples (paired bootstrap).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

VARIANTS: dict[str, list[str]] = {
    "profuser": ["schedule.name=two-stage"],
    "sft": ["schedule.name=train-only", "train.lm_weight=1.0"],
    "fusellm": ["schedule.name=train-only"],
    "simul": ["schedule.name=simul"],
    "reverse": ["schedule.name=reverse"],
}
SHARED_STAGES = ("generate", "reward", "train-mode", "infer-mode")


def train_variants(recipe_path: str, work: Path, overrides: list[str], names: list[str]) -> dict[str, Path]:
    from lmfuse.fuse.pipeline import Run
    from lmfuse.fuse.recipe import load_recipe

    models: dict[str, Path] = {}
    base = work / "profuser"
    for name in names:
        out = work / name
        if name != "profuser":
            for stage in SHARED_STAGES:
                if (base / stage).is_dir() and not (out / stage).exists():
                    shutil.copytree(base / stage, out / stage)
        recipe = load_recipe(recipe_path, [*overrides, *VARIANTS[name], f"output_dir={out}"])
        t0 = time.perf_counter()
        models[name] = Run(recipe).run()
        print(f"[{name}] trained in {time.perf_counter() - t0:.0f} s -> {models[name]}", flush=True)
    return models


def evaluate(model: str, recipe: Any, held_out: int, max_new_tokens: int) -> dict[str, Any]:
    """Per-example response NLL (nats), response bytes and exact match of one model."""
    import torch

    from lmfuse.fuse.instruct import chat_template, load_examples, render_prompt
    from lmfuse.fuse.members import resolve_member
    from lmfuse.fuse.recipe import GenerateConfig
    from lmfuse.fuse.replies import generate_rows
    from lmfuse.fuse.rewards import final_answer

    data = recipe.data
    examples = load_examples(data.path, data.prompt_field, data.response_field, data.split, data.max_chars,
                             offset=0, limit=held_out)
    member = resolve_member(dataclasses.replace(recipe.target, model=model))
    template = chat_template(member.tokenizer, recipe.target.chat_template)
    prompts = [render_prompt(member.tokenizer, e.prompt, data.system, template) for e in examples]
    nll, n_bytes = [], []
    with torch.inference_mode():
        for prompt, ex in zip(prompts, examples, strict=True):
            # Prompt and response tokenized apart, as the train stage reads them.
            context, response = member.encode(prompt).ids, member.encode(ex.response).ids
            lp = member.score_tokens(context + response)[len(context):]
            nll.append(-float(lp.double().sum()))
            n_bytes.append(len(ex.response.encode("utf-8")))
    cfg = GenerateConfig(max_new_tokens=max_new_tokens, do_sample=False, batch_size=8)
    replies = [r[0] for r in generate_rows(member, prompts, cfg, template is not None, seed=0)]
    correct = [float(final_answer(ex.response) is not None and final_answer(r) == final_answer(ex.response))
               for r, ex in zip(replies, examples, strict=True)]
    return {"nll": nll, "bytes": n_bytes, "correct": correct, "replies": replies}


def summarise(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    from lmfuse.eval.metrics import bootstrap_ratio_interval, paired_bootstrap_diff, wilson_interval

    out: dict[str, dict[str, Any]] = {}
    for name, r in runs.items():
        bits = [x / math.log(2) for x in r["nll"]]
        n = len(r["correct"])
        row: dict[str, Any] = {
            "bpb": sum(bits) / sum(r["bytes"]), "bpb_ci": bootstrap_ratio_interval(bits, r["bytes"]),
            "em": sum(r["correct"]) / n, "em_ci": wilson_interval(int(sum(r["correct"])), n), "n": n,
            "tokens": r.get("tokens")}
        for ref in ("original", "sft"):
            if ref in runs and ref != name:
                per_a = [x / b for x, b in zip(r["nll"], r["bytes"], strict=True)]
                per_b = [x / b for x, b in zip(runs[ref]["nll"], runs[ref]["bytes"], strict=True)]
                row[f"nats_per_byte_vs_{ref}"] = paired_bootstrap_diff(per_a, per_b)
                row[f"em_vs_{ref}"] = paired_bootstrap_diff(r["correct"], runs[ref]["correct"])
        out[name] = row
    return out


def report(summary: dict[str, dict[str, Any]], settings: dict[str, Any]) -> str:
    def diff(v: Any) -> str:
        return "" if v is None else f"{v[0]:+.4f} [{v[1]:+.4f}, {v[2]:+.4f}]"

    lines = ["# ProFuser experiment", "", f"Command: `{settings['command']}`", "",
             f"Held-out examples: the first {settings['held_out']} of {settings['recipe']['data']['path']} "
             f"(training starts at data.offset={settings['recipe']['data']['offset']}); "
             f"greedy replies of at most {settings['max_new_tokens']} tokens; wall time "
             f"{settings['wall_seconds']:.0f} s.", "",
             "| model | trained tokens | response bpb [95% CI] | Δ nats/byte vs original | Δ vs SFT "
             "| exact match [95% CI] | Δ EM vs original |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in summary.items():
        lines.append(f"| {name} | {r['tokens'] or ''} | {r['bpb']:.4f} [{r['bpb_ci'][0]:.4f}, {r['bpb_ci'][1]:.4f}] "
                     f"| {diff(r.get('nats_per_byte_vs_original'))} | {diff(r.get('nats_per_byte_vs_sft'))} "
                     f"| {r['em']:.3f} [{r['em_ci'][0]:.2f}, {r['em_ci'][1]:.2f}] | {diff(r.get('em_vs_original'))} |")
    lines += ["", "Δ: mean paired difference per example (lower nats/byte is better) with a paired bootstrap "
              "95% interval; an interval that excludes 0 is a difference the data supports.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from lmfuse.atomic import write_text
    from lmfuse.fuse.recipe import load_recipe
    from lmfuse.fuse.train import trained_tokens

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("--work", type=Path, required=True, help="directory for the variants' runs")
    parser.add_argument("--out", type=Path, required=True, help="directory for results.json and report.md")
    parser.add_argument("--set", action="append", default=[], help="recipe override for every variant")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset, in order")
    parser.add_argument("--held-out", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    args = parser.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
    recipe = load_recipe(args.recipe, args.set)
    if args.held_out > recipe.data.offset:
        parser.error(f"--held-out {args.held_out} overlaps the training examples, which start at data.offset="
                     f"{recipe.data.offset}; lower --held-out or --set data.offset=N")
    started = time.perf_counter()
    models = train_variants(args.recipe, args.work, args.set, names)
    cache = args.work / "eval.json"
    runs: dict[str, dict[str, Any]] = json.loads(cache.read_text()) if cache.is_file() else {}
    for name, spec in [("original", recipe.target.model), *((n, str(p)) for n, p in models.items())]:
        if name not in runs:  # each model's evaluation is kept as it finishes (resumable)
            t0 = time.perf_counter()
            runs[name] = {**evaluate(spec, recipe, args.held_out, args.max_new_tokens),
                          "tokens": trained_tokens(Path(spec).parent / "train_log.jsonl") if name != "original" else 0}
            write_text(cache, json.dumps(runs))
            print(f"[{name}] evaluated in {time.perf_counter() - t0:.0f} s", flush=True)
    summary = summarise(runs)
    settings = {"command": " ".join(["python", *sys.argv]), "recipe": dataclasses.asdict(recipe),
                "variants": {n: VARIANTS[n] for n in names}, "held_out": args.held_out,
                "max_new_tokens": args.max_new_tokens, "wall_seconds": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "results.json", json.dumps({"settings": settings, "summary": summary, "per_example": runs},
                                                     indent=1, default=str) + "\n")
    write_text(args.out / "report.md", report(summary, settings))
    print(report(summary, settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
