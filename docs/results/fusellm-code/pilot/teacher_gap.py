"""How much better is Qwen2.5-Coder than SmolLM2 on the experiment's training code, library vs test modules?

    LMFUSE_HOME=/tmp/lmhome PYTHONPATH=src python docs/results/fusellm-code/pilot/teacher_gap.py

Bits per byte of each model on the first 20 stdlib library modules and the first 20 stdlib test modules
(files over 3,000 characters) in the experiment's sha256 order, 1,500 characters from a quarter into each
file; writes teacher_gap.json next to this file: {"<model> <group>": [bpb, CPU seconds]}.
"""

from __future__ import annotations

import json
import math
import sys
import sysconfig
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "scripts"))
import fusellm_experiment as fx  # noqa: E402

from lmfuse.fuse.members import resolve_member  # noqa: E402
from lmfuse.fuse.recipe import MemberSpec  # noqa: E402


def samples(per_group: int = 20) -> dict[str, list[str]]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    groups: dict[str, list[str]] = {"library": [], "tests": []}
    for path in fx.stdlib_files():
        group = "tests" if {"test", "tests", "idle_test"} & set(path.relative_to(lib).parts) else "library"
        if len(groups[group]) < per_group:
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if len(text) > 3000:
                groups[group].append(fx.line_window(text, len(text) // 4, 1500))
        if all(len(v) == per_group for v in groups.values()):
            return groups
    return groups


def main() -> None:
    out = {}
    groups = samples()
    for name in ("smollm2", "qwen-coder"):
        member = resolve_member(MemberSpec(model=name, name=name), dtype="float32")
        for group, texts in groups.items():
            cpu = time.process_time()
            nll = sum(-float(member.score_tokens(member.encode(t).ids).double().sum()) for t in texts)
            n_bytes = sum(len(t.encode()) for t in texts)
            out[f"{name} {group}"] = (nll / n_bytes / math.log(2), time.process_time() - cpu)
            print(name, group, out[f"{name} {group}"], flush=True)
    (HERE / "teacher_gap.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
