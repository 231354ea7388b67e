"""Small BIG-bench-format task trees and JSONL files written into a tmp directory."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_task(root: Path, name: str, data: dict[str, Any]) -> Path:
    path = root / name / "task.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def yes_no_examples(n: int) -> list[dict[str, Any]]:
    return [
        {"input": f"Is {i} even?", "target_scores": {"Yes": int(i % 2 == 0), "No": int(i % 2 == 1)}}
        for i in range(n)
    ]


def bigbench_tree(root: Path) -> Path:
    """Three tasks: ``parity`` (defaults), ``custom`` (own prefixes), ``nested`` (two subtasks)."""
    write_task(root, "parity", {"name": "parity", "examples": yes_no_examples(12)})
    write_task(root, "custom", {
        "task_prefix": "Pick the colour.\n",
        "example_input_prefix": "Thing: ",
        "example_output_prefix": "\nColour:",
        "append_choices_to_input": False,
        "few_shot_example_separator": "\n\n",
        "examples": [
            {"input": "sky", "target_scores": {" blue": 1, " green": 0, " red": 0}},
            {"input": "grass", "target_scores": {" blue": 0, " green": 1, " red": 0}},
            {"input": "blood", "target_scores": {" blue": 0, " green": 0, " red": 1}},
            {"input": "free text only", "target": "no choices here"},
        ],
    })
    write_task(root, "nested", {"name": "nested", "subtasks": ["two", "three"]})
    write_task(root / "nested", "two", {"examples": yes_no_examples(4)})
    write_task(root / "nested", "three", {
        "examples": [{"input": "1+1", "target_scores": {"2": 1, "3": 0, "11": 1}}],
    })
    write_task(root, "generative", {"examples": [{"input": "hi", "target": "hello"}]})
    return root


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def mc_only_tree(root: Path) -> Path:
    """A task without task.json, only ``task_mc.json`` (as BIG-bench's truthful_qa)."""
    (root / "tqa").mkdir(parents=True, exist_ok=True)
    (root / "tqa" / "task_mc.json").write_text(json.dumps({"examples": yes_no_examples(3)}), encoding="utf-8")
    return root


class OneByOne:
    """``loglikelihood_many`` for a test scorer that has only ``loglikelihood``."""

    def loglikelihood_many(self, requests: Sequence[tuple[str, Sequence[str]]],
                           answers: Sequence[Sequence[tuple[int, int]]] | None = None) -> list[dict[str, list[float]]]:
        return [self.loglikelihood(c, list(o)) for c, o in requests]  # type: ignore[attr-defined]
