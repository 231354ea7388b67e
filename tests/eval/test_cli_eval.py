"""`lmfuse eval` end to end on a toy model saved as a HF directory, and its bad-input exits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmfuse.cli.main import main
from lmfuse.models.member import Member

from .helpers import bigbench_tree, write_jsonl


@pytest.fixture
def bb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = bigbench_tree(tmp_path / "bb")
    monkeypatch.setenv("LMFUSE_DATA_DIR", str(root))
    return root


def test_eval_writes_results_report_and_plot(tmp_path: Path, toy_dir: Path, bb: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    mc = write_jsonl(tmp_path / "mc.jsonl", [{"input": "2+2 =", "choices": ["4", "5"], "target": 0}] * 3)
    (tmp_path / "t.txt").write_text("Some words to score.\n" * 20, encoding="utf-8")
    out = tmp_path / "out"
    code = main(["eval", "--model", str(toy_dir), "--task", f"bigbench:parity,jsonl:{mc}",
                 "--task", f"text:{tmp_path / 't.txt'}", "--limit", "2", "--shots", "1", "--out", str(out)])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"results.json", "report.md", "plot.png"}
    data = json.loads((out / "results.json").read_text())
    assert [t["task"] for t in data["tasks"]] == ["bigbench:parity", f"jsonl:{mc}", f"text:{tmp_path / 't.txt'}"]
    assert data["settings"]["command"].startswith("lmfuse eval --model")
    assert data["settings"]["models"][toy_dir.name]["source"] == str(toy_dir)
    assert "| bigbench:parity | 2 | 0.500 |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("bigbench:parityy", "unknown BIG-bench task 'parityy'. Did you mean 'parity'"),
        ("bigbnch:parity", "unknown task kind 'bigbnch'. Did you mean 'bigbench'"),
        ("jsonl:{tmp}/bad.jsonl", "bad.jsonl:1: missing field 'choices'"),
        ("text:{tmp}/empty.txt", "is empty"),
        ("text:{tmp}/missing.txt", "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_clear_message(tmp_path: Path, bb: Path, task: str, message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(tmp_path / "bad.jsonl", [{"input": "x", "target": 0}])
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    code = main(["eval", "--model", "unused", "--task", task.format(tmp=tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("lmfuse eval: error: ") and message in err and len(err.strip().splitlines()) == 1


def test_no_task_or_model_and_bad_limit(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("text\n", encoding="utf-8")
    assert main(["eval", "--model", "x"]) == 2
    assert "no task to run" in capsys.readouterr().err
    assert main(["eval", "--task", f"text:{tmp_path / 't.txt'}"]) == 2
    assert "no model to evaluate" in capsys.readouterr().err
    assert main(["eval", "--model", "x", "--task", f"text:{tmp_path / 't.txt'}", "--limit", "0"]) == 2
    assert "--limit must be a positive" in capsys.readouterr().err
    assert main(["eval", "--model", "x", "--suite", "bbh"]) == 2
    assert "Did you mean 'bbh8'" in capsys.readouterr().err
    (tmp_path / "taken").write_text("a file")
    assert main(["eval", "--model", "x", "--task", f"text:{tmp_path / 't.txt'}", "--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert "is a file; give a directory" in err and err.count("\n") == 1
    assert (tmp_path / "taken").read_text() == "a file"


def test_eval_weighting_adds_fused_systems_beside_each_member(
        tmp_path: Path, toy_dir: Path, toy_members: dict[str, Member], bb: Path) -> None:
    other = tmp_path / "toy-bytebpe"
    toy_members["bytebpe"].model.save_pretrained(other)
    toy_members["bytebpe"].tokenizer.save_pretrained(other)
    out = tmp_path / "out"
    code = main(["eval", "--model", str(toy_dir), "--model", str(other), "--task", "bigbench:parity",
                 "--limit", "2", "--weighting", "packllm-opt,uniform", "--out", str(out)])
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["systems"] == [toy_dir.name, other.name, "pack[packllm-opt]", "pack[uniform]"]
    assert "--weighting packllm-opt,uniform" in data["settings"]["command"]


def test_eval_alignment_mined_is_recorded_and_refuses_byte_level_weightings(
        tmp_path: Path, toy_dir: Path, toy_members: dict[str, Member], bb: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "toy-bytebpe"
    toy_members["bytebpe"].model.save_pretrained(other)
    toy_members["bytebpe"].tokenizer.save_pretrained(other)
    out = tmp_path / "out"
    args = ["eval", "--model", str(toy_dir), "--model", str(other), "--task", "bigbench:parity", "--limit", "2"]
    assert main([*args, "--weighting", "packllm-opt,top1", "--alignment", "mined", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["models"]["pack[top1]"]["alignment"] == "mined"
    assert "--alignment mined" in data["settings"]["command"]
    assert main([*args, "--weighting", "online", "--alignment", "mined"]) == 2
    assert "packllm-sim, packllm-opt" in capsys.readouterr().err


def test_eval_unknown_weighting_is_one_clear_error(toy_dir: Path, bb: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval", "--model", str(toy_dir), "--task", "bigbench:parity", "--weighting", "packlm-opt"])
    err = capsys.readouterr().err
    assert code == 2 and "Did you mean 'packllm-opt'" in err


def test_resume_keeps_finished_tasks_of_a_stopped_run(tmp_path: Path, toy_dir: Path, bb: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = ["eval", "--model", str(toy_dir), "--limit", "2", "--out", str(out)]
    assert main([*args, "--task", "bigbench:parity"]) == 0  # as if stopped after the first task
    first = json.loads((out / "results.json").read_text())["tasks"][0]
    assert main([*args, "--task", "bigbench:parity,bigbench:custom", "--resume"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert [t["task"] for t in data["tasks"]] == ["bigbench:parity", "bigbench:custom"]
    assert data["tasks"][0] == first and data["settings"]["resumed_tasks"] == ["bigbench:parity"]
    assert "1 finished task(s)" in capsys.readouterr().err
    assert main(["eval", "--model", str(toy_dir), "--task", "bigbench:parity", "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err
