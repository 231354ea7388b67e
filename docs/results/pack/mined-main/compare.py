"""`--alignment mined` beside the exact default, paired on the same examples and chunks.

    python docs/results/pack/mined-main/compare.py docs/results/pack/main-causal/results.json \
        docs/results/pack/mined-main/text/results.json docs/results/pack/mined-main/mc/results.json \
        > docs/results/pack/mined-main/comparison.md

Both runs must have evaluated the same tasks on the same examples (same --limit and --seed); each member
alone is the same in both (its scores do not depend on the alignment), which the script checks.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from lmfuse.eval.metrics import paired_bootstrap_diff, paired_bootstrap_ratio_diff


def load(path: str) -> dict[str, Any]:
    return {t["task"]: t for t in json.loads(Path(path).read_text())["tasks"]}


def main(exact_path: str, *mined_paths: str) -> None:
    """``mined_paths``: one or more mined runs (a run may have been split by task)."""
    exact = load(exact_path)
    mined = {task: t for path in mined_paths for task, t in load(path).items()}
    tasks = [t for t in exact if t in mined]
    fused = sorted({s for t in tasks for s in mined[t]["per_example"] if s.startswith("pack[")}
                   & {s for t in tasks for s in exact[t]["per_example"]})
    print("| task | metric | system | exact | mined | mined − exact [95%] |")
    print("|---|---|---|---:|---:|---:|")
    for task in tasks:
        e, m = exact[task], mined[task]
        if e["indices"] != m["indices"]:
            raise SystemExit(f"{task}: the two runs evaluated different examples (use the same --limit and --seed)")
        for member in (s for s in e["per_example"] if not s.startswith("pack[")):
            if e["metrics"][member] != m["metrics"][member]:
                raise SystemExit(f"{task}: member {member} differs between the runs ({e['metrics'][member]} vs "
                                 f"{m['metrics'][member]}): not the same models or examples")
        for system in fused:
            pe, pm = e["per_example"][system], m["per_example"][system]
            if e["kind"] == "mc":
                for key, name in (("correct", "acc"), ("correct_norm", "acc_norm")):
                    mean, lo, hi = paired_bootstrap_diff(pm[key], pe[key])
                    print(f"| {task} | {name} | {system} | {sum(pe[key]) / len(pe[key]):.3f} | "
                          f"{sum(pm[key]) / len(pm[key]):.3f} | {mean:+.3f} [{lo:+.3f}, {hi:+.3f}] |")
            else:
                to_bits = -1 / math.log(2)
                bpb_e = sum(pe["logprob"]) / sum(pe["bytes"]) * to_bits
                bpb_m = sum(pm["logprob"]) / sum(pm["bytes"]) * to_bits
                mean, lo, hi = paired_bootstrap_ratio_diff([x * to_bits for x in pm["logprob"]],
                                                           [x * to_bits for x in pe["logprob"]], pe["bytes"])
                print(f"| {task} | bpb | {system} | {bpb_e:.4f} | {bpb_m:.4f} | {mean:+.4f} [{lo:+.4f}, {hi:+.4f}] |")


if __name__ == "__main__":
    main(*sys.argv[1:])
