"""Reports from `Results`: ``results.json``, a Markdown table and a PNG plot with chance marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmfuse import atomic
from lmfuse.eval.runner import Results, TaskResult


def write_report(results: Results, out_dir: Path) -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` and ``plot.png`` into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "report.md", "plot": out_dir / "plot.png"}
    results.save(paths["json"])
    atomic.write_text(paths["markdown"], markdown(results))
    plot(results, paths["plot"])
    return paths


def _interval(m: dict[str, float], key: str) -> str:
    return f"{m[key]:.3f} [{m[f'{key}_lo']:.2f}, {m[f'{key}_hi']:.2f}]"


def markdown(results: Results) -> str:
    s = results.settings
    systems: list[str] = s["systems"]
    lines = [
        "# Evaluation report",
        "",
        f"lmfuse {s['lmfuse_version']}, started {s['started_utc']}, wall time {s.get('wall_seconds', '?')} s; "
        f"limit {s['limit']}, {s['shots']}-shot, seed {s['seed']}.",
    ]
    lines += fusion_bought(results.tasks, systems)
    commands = [c for c in s.get("merged_from") or [s.get("command")] if c]
    if commands:
        lines += ["", "Reproduce (one command per joined run):" if len(commands) > 1 else "Reproduce:", ""]
        lines += [f"    {c}" for c in commands]
    if s.get("models"):
        lines += ["", "| system | source | dtype |", "|---|---|---|"]
        for name, info in s["models"].items():
            lines.append(f"| {name} | {info.get('source', '')} | {info.get('dtype', '')} |")
    mc = [t for t in results.tasks if t.kind == "mc"]
    text = [t for t in results.tasks if t.kind == "text"]
    finished = {t.task for t in results.tasks}
    missing = [name for name in s["tasks"] if name not in finished]
    if missing:
        lines += ["", f"**Not finished** (the run stopped before them): {', '.join(missing)}."]
    skipped = s.get("skipped_tasks") or {}
    if skipped:
        lines += ["", "**Skipped** (no source has their data on this machine; `--strict` makes this an error):", ""]
        lines += [f"- {name}: {why}" for name, why in skipped.items()]

    if mc:
        lines += [
            "",
            "## Multiple choice",
            "",
            "Accuracy with 95% Wilson interval; `acc` ranks options by summed log-prob, `acc_norm` by "
            "log-prob per UTF-8 byte. **Bold**: the interval's lower end is above the chance level.",
            "",
            "| task | n | chance | " + " | ".join(f"{x} acc | {x} acc_norm" for x in systems) + " | s |",
            "|---|---:|---:|" + "---:|---:|" * len(systems) + "---:|",
        ]
        for t in mc:
            cells = []
            for x in systems:
                for key in ("acc", "acc_norm"):
                    cell = _interval(t.metrics[x], key)
                    above = t.chance is not None and t.metrics[x][f"{key}_lo"] > t.chance
                    cells.append(f"**{cell}**" if above else cell)
            lines.append(f"| {t.task} | {t.n} | {t.chance:.3f} | " + " | ".join(cells) + f" | {t.seconds:.0f} |")
        lines += ["", "Above chance (either scoring): " + _above_summary(mc, systems)]
        lines += _paired_section(mc, systems)
    if text:
        lines += [
            "",
            "## Bits per UTF-8 byte (lower is better)",
            "",
            "95% bootstrap interval over text chunks. " + _fit_on_sentence(s.get("fit_on", "text"), systems),
            "",
            "| task | chunks | bytes | " + " | ".join(systems) + " | s |",
            "|---|---:|---:|" + "---:|" * len(systems) + "---:|",
        ]
        for t in text:
            nbytes = int(next(iter(t.metrics.values()))["bytes"])
            cells = [_interval(t.metrics[x], "bpb") for x in systems]
            lines.append(f"| {t.task} | {t.n} | {nbytes} | " + " | ".join(cells) + f" | {t.seconds:.0f} |")
    lines += _weights_section(results.tasks, systems, s.get("models", {}))
    return "\n".join(lines) + "\n"


def _fit_on_sentence(fit_on: str, systems: list[str]) -> str:
    """How the fused systems' weights were fitted for text, said where their bits per byte are."""
    if not any(x.startswith("pack[") for x in systems):
        return ""
    if fit_on == "preceding":
        return ("Causal: each chunk is scored with weights fitted on the chunk before it (what generation gets); "
                "the first chunk of a text only provides that fit and is not scored.")
    return ("Transductive: each chunk is scored with weights fitted on that chunk itself (PackLLM's "
            "language-modelling set-up; the weights have seen the text they score).")


def _verdict(member: str, fused: str, lo: float, hi: float, better: float) -> str:
    """A plain sentence about an interval of fused minus member; ``better`` is +1 when a higher value
    is better (accuracy), -1 when lower is (bits per byte)."""
    if better * lo > 0 and better * hi > 0:
        return f"fusion helped: {fused} beats the best member"
    if better * lo < 0 and better * hi < 0:
        return f"fusion did not help: {member} alone is better"
    return "fusion did not help measurably: the interval contains 0"


def fusion_bought(tasks: list[TaskResult], systems: list[str]) -> list[str]:
    """Per task: the best member, the best fused strategy, their paired difference (95% bootstrap)
    and a plain verdict. Multiple choice by acc_norm (per-byte), text by bits per byte."""
    from lmfuse.eval.metrics import LN2, bootstrap_ratio_interval, paired_bootstrap_diff

    fused = [x for x in systems if x.startswith("pack[")]
    members = [x for x in systems if not x.startswith("pack[")]
    if not fused or not members or not tasks or any(not t.per_example for t in tasks):
        return []
    lines = ["", "## What fusion bought", "",
             "Per task, the best member alone against the best fused strategy, both chosen after the fact on "
             "these same examples (which favours neither). Multiple choice: acc_norm, difference in accuracy "
             "points (fused minus member, higher is better). Text: bits per byte, difference fused minus member "
             "(lower is better). 95% paired bootstrap interval over examples or chunks.", "",
             "| task | metric | best member | best fused | difference [95%] | verdict |", "|---|---|---|---|---:|---|"]
    for t in tasks:
        if t.kind == "mc":
            score = {x: t.metrics[x]["acc_norm"] for x in systems}
            member, best = max(members, key=score.__getitem__), max(fused, key=score.__getitem__)
            mean, lo, hi = paired_bootstrap_diff(t.per_example[best]["correct_norm"],
                                                 t.per_example[member]["correct_norm"])
            metric, better = "acc_norm", 1.0
        else:
            score = {x: t.metrics[x]["bpb"] for x in systems}
            member, best = min(members, key=score.__getitem__), min(fused, key=score.__getitem__)
            n_bytes = t.per_example[member]["bytes"]
            bits = [(m - f) / LN2 for f, m in zip(t.per_example[best]["logprob"], t.per_example[member]["logprob"],
                                                   strict=True)]
            mean = sum(bits) / sum(n_bytes)
            lo, hi = bootstrap_ratio_interval(bits, n_bytes)
            metric, better = "bpb", -1.0
        lines.append(f"| {t.task} | {metric} | {member} {score[member]:.3f} | {best} {score[best]:.3f} | "
                     f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}] | {_verdict(member, best, lo, hi, better)} |")
    return lines


def _pooled(tasks: list[TaskResult], system: str, key: str) -> list[float]:
    return [float(c) for t in tasks for c in t.per_example[system][key]]


def _paired_section(mc: list[TaskResult], systems: list[str]) -> list[str]:
    """Fused systems against packllm-opt, uniform, top-1 and the best member, pooled over tasks, paired by
    example.

    The paper's claim is a difference between systems scored on the same examples: a paired bootstrap
    of the per-example difference is much tighter than comparing two independent intervals."""
    from lmfuse.eval.metrics import paired_bootstrap_diff

    fused = [x for x in systems if x.startswith("pack[")]
    members = [x for x in systems if not x.startswith("pack[")]
    if not fused or not members or any(not t.per_example for t in mc):
        return []
    lines = ["", "## Paired differences (pooled over tasks)", "",
             "Mean per-example accuracy difference, row minus column, with a 95% paired bootstrap interval "
             "(**bold**: excludes 0). *Best member* is the member with the highest pooled accuracy on these "
             "same examples, chosen after the fact, which favours it."]
    above = [t for t in mc if any(t.above_chance(m) for m in members)]
    groups = [("all multiple-choice tasks", mc)]
    if above and len(above) < len(mc):
        groups.append(("tasks where a member alone is above chance", above))
    for label, tasks in groups:
        n = sum(len(t.per_example[members[0]]["correct"]) for t in tasks)
        for key in ("correct", "correct_norm"):
            best = max(members, key=lambda m: sum(_pooled(tasks, m, key)))
            refs = [r for r in ("pack[packllm-opt]", "pack[uniform]", "pack[top1]") if r in systems] + [best]
            names = [f"best member ({best})" if r == best else r for r in refs]
            metric = "acc" if key == "correct" else "acc_norm"
            lines += ["", f"**{metric}, {label}** ({len(tasks)} tasks, {n} examples)", "",
                      "| system | pooled | " + " | ".join(f"Δ vs {x}" for x in names) + " |",
                      "|---|---:|" + "---:|" * len(refs)]
            for x in fused:
                mine = _pooled(tasks, x, key)
                cells = []
                for r in refs:
                    if r == x:
                        cells.append("")
                        continue
                    mean, lo, hi = paired_bootstrap_diff(mine, _pooled(tasks, r, key))
                    cell = f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                    cells.append(f"**{cell}**" if lo > 0 or hi < 0 else cell)
                lines.append(f"| {x} | {sum(mine) / len(mine):.3f} | " + " | ".join(cells) + " |")
    return lines


def _weights_section(tasks: list[TaskResult], systems: list[str], provenance: dict[str, Any]) -> list[str]:
    """Mean member weights per task for each system that weighs members: which member each strategy
    trusted, where the accuracy tables only say how well it did; and what each strategy fitted them on."""
    weighted = [x for x in systems if any(t.weights(x) for t in tasks)]
    if not weighted:
        return []
    members = list(next(t.weights(x) for x in weighted for t in tasks if t.weights(x)))
    fitted_on = {x: provenance.get(x, {}).get("weights_fitted_on", "not recorded in these results") for x in weighted}
    lines = ["", "## Member weights", "",
             f"Mean weight per example of {' / '.join(members)}; 1 / 0 / 0 is the first member alone. Fitted on "
             "(for a text task: its chunk, or the chunk before it, as the bits-per-byte table says):", "",
             *(f"- {x}: {where}" for x, where in fitted_on.items()), "",
             "| task | " + " | ".join(weighted) + " |", "|---|" + "---|" * len(weighted)]
    for t in tasks:
        cells = []
        for x in weighted:
            w = t.weights(x)
            cells.append(" / ".join(f"{sum(w[m]) / len(w[m]):.2f}" if w.get(m) else "–" for m in members))
        lines.append(f"| {t.task} | " + " | ".join(cells) + " |")
    return lines


def _above_summary(tasks: list[TaskResult], systems: list[str]) -> str:
    parts = []
    for t in tasks:
        who = [x for x in systems if t.above_chance(x)]
        if who:
            parts.append(f"{t.task} ({', '.join(who)})")
    return "; ".join(parts) if parts else "none."


def plot(results: Results, path: Path) -> None:
    """Bars per system and task (acc and acc_norm with intervals, chance as a black tick), and bpb."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    systems: list[str] = results.settings["systems"]
    mc = [t for t in results.tasks if t.kind == "mc"]
    text = [t for t in results.tasks if t.kind == "text"]
    panels = [("acc", mc), ("acc_norm", mc)] if mc else []
    if text:
        panels.append(("bpb", text))
    if not panels:
        return
    width = max(6.0, 0.9 * max(len(tasks) for _, tasks in panels) * max(1, len(systems)) / 2 + 2)
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 3.6 * len(panels)), squeeze=False)
    bar = 0.8 / max(1, len(systems))
    for ax, (key, tasks) in zip(axes[:, 0], panels, strict=True):
        x = np.arange(len(tasks))
        for k, system in enumerate(systems):
            vals = np.array([t.metrics[system][key] for t in tasks])
            err = np.array([[v - t.metrics[system][f"{key}_lo"], t.metrics[system][f"{key}_hi"] - v]
                            for v, t in zip(vals, tasks, strict=True)]).T.clip(min=0)  # rounding noise
            ax.bar(x - 0.4 + bar * (k + 0.5), vals, bar, yerr=err, capsize=2, label=system)
        if key != "bpb":
            for i, t in enumerate(tasks):
                ax.hlines(t.chance, i - 0.45, i + 0.45, colors="black", linestyles="--",
                          label="chance" if i == 0 else None)
            ax.set_ylim(0, 1)
        ax.set_ylabel(key + (" (bits/byte, lower is better)" if key == "bpb" else ""))
        ax.set_xticks(x)
        ax.set_xticklabels([t.task.split(":", 1)[-1] for t in tasks], rotation=30, ha="right", fontsize=8)
        ax.legend(fontsize=7, ncol=len(systems) + 1)
    s = results.settings
    fig.suptitle(f"lmfuse eval: limit {s['limit']}, {s['shots']}-shot, seed {s['seed']}", fontsize=10)
    fig.tight_layout()
    with atomic.replacing(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
