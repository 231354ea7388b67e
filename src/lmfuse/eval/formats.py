"""Multiple-choice records in the formats users already have, turned into `MCExample`s.

- **BIG-Bench-Hard** (``bbh/<task>.json``: ``{"examples": [{"input", "target"}]}``). The options are
  the ``(A) ...`` lines of the input, or its ``Options:`` list of ``- ...`` lines; a task that lists
  none but whose targets take two values across the file (``yes``/``no``, ``True``/``False``) is a
  two-way choice between them. Free-answer tasks (dyck_languages, word_sorting, object_counting,
  multistep_arithmetic_two) are not multiple choice and are refused by name.
- **Hugging Face records** (``hf:`` tasks): BIG-bench's own export (``inputs``,
  ``multiple_choice_targets``, ``multiple_choice_scores``), BBH (``input``, ``target``), MMLU-style
  (``question``, ``choices``, ``answer``) and lmfuse's JSONL fields (``input``, ``choices``, ``target``).

Prompt and scoring follow BIG-bench's conventions (`lmfuse.eval.tasks`): ``Q: {input}\\nA:`` and each
option's own text is the continuation, with one space before it. For BBH the option text is scored, not
its letter: a letter carries no meaning of its own for a small model, and the same question then scores
the same way whether it came from BIG-bench or BBH.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from typing import Any

from lmfuse.errors import TaskError
from lmfuse.eval.taskdata import MCExample

_LETTERED = re.compile(r"^\(([A-Z])\)\s*(.+?)\s*$", re.MULTILINE)
_DASHED = re.compile(r"^- (.+?)\s*$", re.MULTILINE)

BBH_FREE_ANSWER = ("dyck_languages", "multistep_arithmetic_two", "object_counting", "word_sorting")


def _example(question: str, options: Sequence[str], correct: Iterable[int], group: str) -> MCExample:
    return MCExample(
        query=f"Q: {question.strip()}\nA:",
        options=tuple(" " + o.strip() for o in options),
        correct=tuple(sorted(set(correct))),
        separator="\n\n",
        group=group,
    )


def bbh_options(text: str) -> tuple[list[str], list[str]]:
    """``(labels, options)`` listed in a BBH input: ``(A) ...`` lines, else ``- ...`` after ``Options:``."""
    lettered = _LETTERED.findall(text)
    if len(lettered) >= 2:
        return [f"({letter})" for letter, _ in lettered], [option for _, option in lettered]
    _, found, tail = text.rpartition("Options:")
    dashed = _DASHED.findall(tail) if found else []
    return (dashed, dashed) if len(dashed) >= 2 else ([], [])


def bbh_examples(data: Any, task: str) -> list[MCExample]:
    """The MC examples of one BIG-Bench-Hard file (``{"examples": [{"input", "target"}]}``)."""
    if task in BBH_FREE_ANSWER:
        raise TaskError(f"BBH task {task!r} has free-form answers, not multiple choice; "
                        f"the free-answer BBH tasks are {', '.join(BBH_FREE_ANSWER)}")
    records = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(records, list) or not records:
        raise TaskError(f"BBH task {task!r}: expected {{\"examples\": [{{\"input\": ..., \"target\": ...}}]}}")
    binary = sorted({str(r.get("target", "")).strip() for r in records if isinstance(r, dict)})
    out = []
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("input"), str) or "target" not in record:
            raise TaskError(f"BBH task {task!r}, example {index}: needs string fields 'input' and 'target'")
        question, target = record["input"], str(record["target"]).strip()
        labels, options = bbh_options(question)
        if not options and len(binary) == 2:
            labels, options = binary, binary
        if target not in labels:
            raise TaskError(f"BBH task {task!r}, example {index}: target {target!r} is not one of its options "
                            f"{labels or '(none listed)'}; is it a multiple-choice task?")
        out.append(_example(question, options, [labels.index(target)], group=task))
    return out


def record_examples(records: Sequence[Any], source: str) -> list[MCExample]:
    """MC examples from dict records in any of the formats the module docstring names."""
    if records and all(isinstance(r, dict) and {"input", "target"} <= r.keys() and "choices" not in r
                       for r in records):
        return bbh_examples({"examples": list(records)}, source)
    out = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise TaskError(f"{source}, record {index}: expected an object, got {type(record).__name__}")
        example = _record_example(record, f"{source}#{index}")
        if example is not None:
            out.append(example)
    if not out:
        raise TaskError(
            f"{source}: no multiple-choice records; expected one of the field sets "
            "(inputs, multiple_choice_targets, multiple_choice_scores), (question, choices, answer), "
            "(input, choices, target) or BBH's (input, target) with options listed in the input"
        )
    return out


def _record_example(record: dict[str, Any], where: str) -> MCExample | None:
    if "multiple_choice_targets" in record:  # BIG-bench's own Hugging Face export
        options = [str(o) for o in record.get("multiple_choice_targets") or []]
        scores = [float(s) for s in record.get("multiple_choice_scores") or []]
        if len(options) < 2 or len(scores) != len(options) or max(scores) <= 0:
            return None
        order = list(range(len(options)))
        random.Random(where).shuffle(order)  # exports list the right answer first
        options, scores = [options[i] for i in order], [scores[i] for i in order]
        listed = "".join(f"\n  choice: {o}" for o in options)
        return _example(str(record.get("inputs", "")) + listed, options,
                        [i for i, s in enumerate(scores) if s == max(scores)], group="")
    if "choices" in record and ("answer" in record or "target" in record):
        choices = record["choices"]
        if isinstance(choices, dict):  # {"text": [...], "label": [...]} (ARC, CommonsenseQA)
            choices = choices.get("text", [])
        answer = record.get("answer", record.get("target"))
        if isinstance(answer, str) and isinstance(record["choices"], dict):
            labels = list(record["choices"].get("label", []))
            answer = labels.index(answer) if answer in labels else None
        if not isinstance(answer, int) or not isinstance(choices, list) or not 0 <= answer < len(choices):
            raise TaskError(f"{where}: answer {answer!r} does not index its {len(choices)} choices")
        question = str(record.get("question", record.get("input", "")))
        return _example(question, [str(c) for c in choices], [answer], group="")
    raise TaskError(f"{where}: unrecognised record fields {sorted(record)[:8]}")
