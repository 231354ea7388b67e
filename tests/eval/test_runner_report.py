"""The evaluation pipeline end to end on toy members, and the report files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest

from lmfuse.errors import CorruptFileError, InputError
from lmfuse.eval import metrics
from lmfuse.eval.combined import CombinedScorer
from lmfuse.eval.member_scorer import MemberScorer
from lmfuse.eval.report import markdown, write_report
from lmfuse.eval.runner import Results, evaluate, merge
from lmfuse.eval.tasks import MCExample, MCTask
from lmfuse.models.member import Member

from .helpers import OneByOne, bigbench_tree


class FixedScorer(OneByOne):
    """Prefers the option whose text is listed in ``likes``; counts the contexts it was given."""

    def __init__(self, likes: set[str]) -> None:
        self.likes = likes
        self.contexts: list[str] = []

    def systems(self) -> list[str]:
        return ["fixed"]

    def loglikelihood(self, context: str, continuations: list[str]) -> dict[str, list[float]]:
        self.contexts.append(context)
        return {"fixed": [0.0 if c in self.likes else -10.0 for c in continuations]}

    def text_logprob(self, texts: list[str]) -> dict[str, list[float]]:
        return {"fixed": [-8 * 0.6931471805599453 * len(t.encode()) for t in texts]}


def test_accuracy_chance_and_intervals_from_a_known_scorer(tmp_path: Path) -> None:
    root = bigbench_tree(tmp_path / "bb")
    results = evaluate(FixedScorer({"Yes"}), ["bigbench:parity"], bigbench_root=root)
    (task,) = results.tasks
    assert task.n == 12 and task.chance == pytest.approx(0.5)
    assert task.metrics["fixed"]["acc"] == pytest.approx(0.5)  # always "Yes": right on even numbers
    assert task.metrics["fixed"]["acc_lo"] < 0.5 < task.metrics["fixed"]["acc_hi"]
    assert not task.above_chance("fixed")
    # acc_norm divides by bytes: "No" (2 bytes) at -10 beats "Yes" (3 bytes)? -5 < 0, so still "Yes"
    assert task.metrics["fixed"]["acc_norm"] == pytest.approx(0.5)


def test_limit_shots_and_seed_are_applied_and_recorded(tmp_path: Path) -> None:
    root = bigbench_tree(tmp_path / "bb")
    scorer = FixedScorer(set())
    results = evaluate(scorer, ["bigbench:parity"], limit=5, shots=2, seed=7, bigbench_root=root)
    (task,) = results.tasks
    assert task.indices == metrics.sample_indices(12, 5, 7) and task.n == 5 and task.n_available == 12
    assert all(c.count("Q: ") == 3 for c in scorer.contexts)  # two demonstrations + the query
    assert all(not c.startswith("\n") for c in scorer.contexts)
    s = results.settings
    assert (s["limit"], s["shots"], s["seed"], s["systems"]) == (5, 2, 7, ["fixed"])
    assert s["tasks"] == ["bigbench:parity"] and s["lmfuse_version"] and s["started_utc"]


def test_demonstrations_come_from_the_same_subtask(tmp_path: Path) -> None:
    root = bigbench_tree(tmp_path / "bb")
    scorer = FixedScorer(set())
    evaluate(scorer, ["bigbench:nested/two"], shots=1, bigbench_root=root)
    assert all("1+1" not in c for c in scorer.contexts)


def test_above_chance_detection() -> None:
    examples = [MCExample(query=f"{i}?", options=(" a", " b", " c", " d"), correct=(i % 4,)) for i in range(60)]
    oracle = FixedScorer(set())
    oracle.loglikelihood = lambda ctx, opts: {  # type: ignore[method-assign]
        "fixed": [0.0 if j == int(ctx.rstrip("?")) % 4 else -1.0 for j in range(len(opts))]
    }
    results = evaluate(oracle, [MCTask(name="local", source="test", examples=examples)])
    assert results.tasks[0].chance == pytest.approx(0.25)
    assert results.tasks[0].metrics["fixed"]["acc"] == 1.0 and results.tasks[0].above_chance("fixed")


def test_text_bits_per_byte(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("héllo wörld\n" * 400, encoding="utf-8")
    results = evaluate(FixedScorer(set()), [f"text:{tmp_path / 't.txt'}"])
    m = results.tasks[0].metrics["fixed"]
    assert m["bpb"] == pytest.approx(8.0) and m["bpb_lo"] == pytest.approx(8.0)
    assert m["bytes"] == len(("héllo wörld\n" * 400).encode())


def test_report_files_on_toy_members(tmp_path: Path, toy_members: dict[str, Member]) -> None:
    root = bigbench_tree(tmp_path / "bb")
    (tmp_path / "t.txt").write_text("To be, or not to be: that is the question.\n" * 30, encoding="utf-8")
    scorer = CombinedScorer([MemberScorer(m, window=64) for m in toy_members.values()])
    results = evaluate(scorer, ["bigbench:custom", "bigbench:parity", f"text:{tmp_path / 't.txt'}"], limit=2,
                       bigbench_root=root, provenance=scorer.provenance())
    paths = write_report(results, tmp_path / "out")
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(paths["json"].read_text())
    assert data["settings"]["models"]["toy-bytebpe"]["source"] == "toy"
    again = Results.load(paths["json"])
    assert again.tasks[1].metrics == results.tasks[1].metrics
    md = markdown(results)
    assert "| bigbench:custom | 2 | 0.333 |" in md and "Bits per UTF-8 byte" in md
    assert "## Member weights" not in md  # members alone weigh nothing
    for system in scorer.systems():
        assert f"{system} acc_norm" in md


def test_merge_runs_of_different_systems(tmp_path: Path) -> None:
    root = bigbench_tree(tmp_path / "bb")
    a = evaluate(FixedScorer({"Yes"}), ["bigbench:parity"], limit=6, bigbench_root=root)
    other = FixedScorer({"No"})
    other.systems = lambda: ["other"]  # type: ignore[method-assign]
    other.loglikelihood = lambda ctx, opts: {"other": [0.0 if o == "No" else -10.0 for o in opts]}  # type: ignore[method-assign]
    b = evaluate(other, ["bigbench:parity"], limit=6, bigbench_root=root)
    both = merge([a, b])
    assert both.settings["systems"] == ["fixed", "other"]
    m = both.tasks[0].metrics
    assert m["fixed"]["acc"] + m["other"]["acc"] == pytest.approx(1.0)
    a.settings["command"], b.settings["command"] = "run a", "run b"
    third_scorer = FixedScorer(set())
    third_scorer.systems = lambda: ["third"]  # type: ignore[method-assign]
    third_scorer.loglikelihood = lambda ctx, opts: {"third": [0.0] * len(opts)}  # type: ignore[method-assign]
    third = evaluate(third_scorer, ["bigbench:parity"], limit=6, bigbench_root=root)
    third.settings["command"] = "run c"
    assert merge([merge([a, b]), third]).settings["merged_from"] == ["run a", "run b", "run c"]
    with pytest.raises(ValueError, match=r"system\(s\) \['fixed'\] twice"):
        merge([a, a])
    with pytest.raises(ValueError, match="differ in"):
        merge([a, evaluate(FixedScorer(set()), ["bigbench:parity"], limit=5, bigbench_root=root)])


def test_on_task_sees_partial_results(tmp_path: Path) -> None:
    root = bigbench_tree(tmp_path / "bb")
    seen: list[list[str]] = []
    evaluate(FixedScorer(set()), ["bigbench:parity", "bigbench:custom"], bigbench_root=root,
             on_task=lambda partial: seen.append([t.task for t in partial.tasks]))
    assert seen == [["bigbench:parity"], ["bigbench:parity", "bigbench:custom"]]


def test_partial_runs_merge_on_common_tasks_and_report_what_is_missing(tmp_path: Path) -> None:
    root = bigbench_tree(tmp_path / "bb")
    full = evaluate(FixedScorer(set()), ["bigbench:parity", "bigbench:custom"], bigbench_root=root)
    other = FixedScorer(set())
    other.systems = lambda: ["other"]  # type: ignore[method-assign]
    other.loglikelihood = lambda ctx, opts: {"other": [0.0] * len(opts)}  # type: ignore[method-assign]
    part = evaluate(other, ["bigbench:parity", "bigbench:custom"], bigbench_root=root)
    part.tasks = part.tasks[:1]  # as if stopped after the first task
    both = merge([full, part])
    assert [t.task for t in both.tasks] == ["bigbench:parity"]
    assert "**Not finished** (the run stopped before them): bigbench:custom." in markdown(both)


def test_resume_skips_finished_tasks_and_gives_the_uninterrupted_results(tmp_path: Path) -> None:
    root = bigbench_tree(tmp_path / "bb")
    tasks = ["bigbench:parity", "bigbench:custom"]
    uninterrupted = evaluate(FixedScorer({"Yes"}), tasks, limit=6, bigbench_root=root)
    stopped = evaluate(FixedScorer({"Yes"}), tasks[:1], limit=6, bigbench_root=root)  # killed after task 1
    write_report(stopped, tmp_path / "out")
    scorer = FixedScorer({"Yes"})
    resumed = evaluate(scorer, tasks, limit=6, bigbench_root=root,
                       resume=Results.load(tmp_path / "out" / "results.json"))
    assert len(scorer.contexts) == 3  # only bigbench:custom's three MC examples were scored again
    assert resumed.settings["resumed_tasks"] == ["bigbench:parity"]
    assert [t.metrics for t in resumed.tasks] == [t.metrics for t in uninterrupted.tasks]


def test_resume_refuses_different_settings(tmp_path: Path) -> None:
    root = bigbench_tree(tmp_path / "bb")
    earlier = evaluate(FixedScorer({"Yes"}), ["bigbench:parity"], limit=6, bigbench_root=root)
    with pytest.raises(InputError, match=r"cannot resume: the earlier run differs in limit: 6 then, 5 now"):
        evaluate(FixedScorer({"Yes"}), ["bigbench:parity"], limit=5, bigbench_root=root, resume=earlier)


def test_half_written_results_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text('{"settings": {"limit": 5}, "tasks": [{"task": "bigb', encoding="utf-8")
    with pytest.raises(CorruptFileError, match="is not an lmfuse results file"):
        Results.load(path)


def test_report_pairs_fused_systems_with_uniform_and_the_best_member(tmp_path: Path) -> None:
    class Systems(OneByOne):
        """A member and pack[uniform] with no preference, and pack[yes] preferring "Yes"."""

        def systems(self) -> list[str]:
            return ["member", "pack[uniform]", "pack[yes]"]

        def loglikelihood(self, context: str, options: list[str]) -> dict[str, list[float]]:
            yes = [0.0 if o.strip() == "Yes" else -5.0 for o in options]
            return {"member": [-1.0] * len(options), "pack[uniform]": [-1.0] * len(options), "pack[yes]": yes}

    results = evaluate(Systems(), ["bigbench:parity"], bigbench_root=bigbench_tree(tmp_path / "bb"))
    (task,) = results.tasks
    gain = task.metrics["pack[yes]"]["acc"] - task.metrics["pack[uniform]"]["acc"]
    assert gain != 0
    report = markdown(results)
    assert "## Paired differences (pooled over tasks)" in report
    row = next(line for line in report.splitlines() if line.startswith("| pack[yes] |"))
    assert f"{gain:+.3f} [" in row.split("|")[3]
    assert "best member (member)" in report


class OracleScorer(OneByOne):
    """Two members and one fused system on the parity task: ``a`` always says Yes, ``b`` always No,
    ``pack[u]`` is always right. On text: 2, 3 and 1.5 bits per byte."""

    BITS: ClassVar[dict[str, float]] = {"a": 2.0, "b": 3.0, "pack[u]": 1.5}

    def systems(self) -> list[str]:
        return list(self.BITS)

    def loglikelihood(self, context: str, continuations: list[str]) -> dict[str, list[float]]:
        even = int(context.rsplit("Is ", 1)[1].split()[0]) % 2 == 0
        right = "Yes" if even else "No"
        return {"a": [0.0 if c == "Yes" else -9.0 for c in continuations],
                "b": [0.0 if c == "No" else -9.0 for c in continuations],
                "pack[u]": [0.0 if c == right else -9.0 for c in continuations]}

    def text_logprob(self, texts: list[str], preceding: list[str] | None = None) -> dict[str, list[float]]:
        return {s: [-b * 0.6931471805599453 * len(t.encode()) for t in texts] for s, b in self.BITS.items()}


def test_report_opens_with_what_fusion_bought_per_task(tmp_path: Path) -> None:
    root = bigbench_tree(tmp_path / "bb")
    (tmp_path / "t.txt").write_text("A line of text to score.\n" * 300)
    results = evaluate(OracleScorer(), ["bigbench:parity", f"text:{tmp_path / 't.txt'}"], bigbench_root=root)
    md = markdown(results)
    section = md[md.index("## What fusion bought"):]
    assert md.index("## What fusion bought") < md.index("## Multiple choice") and md.count("\n## ") >= 3
    mc_row = next(line for line in section.splitlines() if line.startswith("| bigbench:parity"))
    assert "| a 0.500 | pack[u] 1.000 | +0.500 [" in mc_row and "fusion helped: pack[u] beats the best member" in mc_row
    text_row = next(line for line in section.splitlines() if line.startswith("| text:"))
    assert "| bpb | a 2.000 | pack[u] 1.500 | -0.500 [-0.500, -0.500] | fusion helped" in text_row


def test_fusion_verdicts_say_plainly_when_fusion_did_not_help() -> None:
    from lmfuse.eval.report import _verdict

    assert _verdict("m", "f", 0.01, 0.05, better=1.0).startswith("fusion helped")
    assert _verdict("m", "f", -0.05, -0.01, better=1.0) == "fusion did not help: m alone is better"
    assert _verdict("m", "f", -0.02, 0.03, better=1.0) == "fusion did not help measurably: the interval contains 0"
    assert _verdict("m", "f", -0.05, -0.01, better=-1.0).startswith("fusion helped")  # bits per byte: lower
    assert _verdict("m", "f", 0.01, 0.05, better=-1.0) == "fusion did not help: m alone is better"
