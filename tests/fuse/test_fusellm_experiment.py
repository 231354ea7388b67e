"""`scripts/fusellm_experiment.py` end to end on toy members: corpus, shared stages, paired variants, report,
resume; the GPU preset's code paths (parallel parts, bfloat16 autocast) on the CPU."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from lmfuse.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--scale", "tiny", "--quiet", "--lambdas", "0.9"]


@functools.cache
def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fusellm_experiment", ROOT / "scripts" / "fusellm_experiment.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, Path, Path]:
    """The tiny experiment run once: plain and MinCE (lambda 0.9), seeds 1 and 2."""
    work, out = tmp_path_factory.mktemp("work"), tmp_path_factory.mktemp("out")
    script = load_script()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        mp.setenv("ACCELERATE_MIXED_PRECISION", "no")  # main sets it; restored afterwards
        assert script.main([*TINY, "--work", str(work), "--out", str(out)]) == 0
    return script, work, out


@pytest.mark.slow  # ~20 s on the shared CPU
def test_variants_train_the_same_rows_and_the_report_pairs_them(finished: tuple[ModuleType, Path, Path]) -> None:
    out = finished[2]
    result = json.loads((out / "results.json").read_text())
    runs = result["runs"]
    assert sorted(runs) == ["mince-0.9-s1", "mince-0.9-s2", "plain-s1", "plain-s2"]
    # Equal tokens and steps for every variant and seed: one epoch over the same fused rows.
    assert len({(r["tokens"], r["steps"]) for r in runs.values()}) == 1
    assert runs["plain-s1"]["tokens"] == result["teachers"]["tokens"]["target"]
    logs = result["train_logs"]
    for seed in (1, 2):
        plain, fused = logs[f"plain-s{seed}"], logs[f"mince-0.9-s{seed}"]
        # Same rows in the same order from the same start: the first step's CLM loss is the same...
        assert plain[0]["clm"] == pytest.approx(fused[0]["clm"], rel=1e-6)
        # ...plain training gives the teacher no weight, MinCE does; the trained models differ.
        assert plain[0]["loss"] == pytest.approx(plain[0]["clm"], rel=1e-6)
        assert fused[0]["loss"] == pytest.approx(0.9 * fused[0]["clm"] + 0.1 * fused[0]["fusion"], rel=1e-5)
        assert result["summary"]["models"][f"mince-0.9-s{seed}"]["vs_plain"][0] != 0
    # The seeds change the data order, so the two plain runs differ too.
    assert [r["clm"] for r in logs["plain-s1"]] != [r["clm"] for r in logs["plain-s2"]]
    pooled = result["summary"]["pooled"]["mince-0.9"]
    assert pooled["seeds"] == [1, 2]
    lo, hi = pooled["vs_plain"][1:]
    assert lo <= pooled["vs_plain"][0] <= hi
    assert "plain" in result["summary"]["seed_spread"]
    text = (out / "report.md").read_text()
    assert "| mince-0.9 | 1 |" in text and "| train plain-s2 |" in text
    assert (out / "curves.png").stat().st_size > 10_000


@pytest.mark.slow
def test_held_out_python_is_pinned_third_party_code_never_trained_on(finished: tuple[ModuleType, Path, Path]) -> None:
    script, work, _ = finished
    manifest = json.loads((work / "data" / "manifest.json").read_text())
    train = [f for f in manifest["files"] if f["file"].startswith("train/")]
    held = [f for f in manifest["files"] if f["file"].startswith("heldout/")]
    assert all(f["source"].startswith("stdlib:") for f in train)
    constraints = (ROOT / "constraints.txt").read_text().splitlines()
    for f in held:
        pinned = f["source"].split(":")[0]  # "<dist>==<version>" as installed
        assert pinned in constraints, pinned
    training = "".join((work / "data" / f["file"]).read_text() for f in train)
    for f in held:
        assert (work / "data" / f["file"]).read_text() not in training
    budget = script.SCALES["tiny"].train_chars
    assert budget <= sum(f["chars"] for f in train) <= budget + 500  # whole modules, the last one cut at a line end


@pytest.mark.slow
def test_a_rerun_resumes_without_training_again_and_refuses_other_settings(
        finished: tuple[ModuleType, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script, work, out = finished
    monkeypatch.chdir(ROOT)
    model = work / "runs" / "plain-s1" / "train" / "model" / "model.safetensors"
    stamp, evals = model.stat().st_mtime_ns, (work / "eval.json").read_text()
    assert script.main([*TINY, "--work", str(work), "--out", str(tmp_path)]) == 0
    assert model.stat().st_mtime_ns == stamp and (work / "eval.json").read_text() == evals
    again, first = (json.loads((d / "results.json").read_text())["summary"] for d in (tmp_path, out))
    assert again == first
    with pytest.raises(InputError, match=r"train\.lr"):
        script.main([*TINY, "--work", str(work), "--out", str(tmp_path), "--set", "train.lr=0.5"])
    with pytest.raises(SystemExit, match="corpus built with"):
        script.main([*TINY, "--work", str(work), "--out", str(tmp_path), "--train-chars", "999"])


def test_train_log_reader_skips_a_torn_last_line(tmp_path: Path) -> None:
    from lmfuse.fuse.train import read_train_log, trained_tokens

    log = tmp_path / "train_log.jsonl"
    assert read_train_log(log) == [] and trained_tokens(log) is None
    log.write_text('{"step": 1, "tokens": 30}\n{"step": 2, "tokens": 12}\n{"step": 3, "tok')
    assert [r["step"] for r in read_train_log(log)] == [1, 2]
    assert trained_tokens(log) == 42


def test_parts_cover_every_row_once() -> None:
    script = load_script()
    parts = script.part_overrides(Path("d"), 10, 3, Path("s"))
    spans = [(int(p[1].split("=")[1]), int(p[2].split("=")[1])) for p in parts]
    assert spans == [(0, 4), (4, 4), (8, 4)]  # the last part's limit runs past the end: rows 8 and 9
    assert len(script.part_overrides(Path("d"), 2, 4, Path("s"))) == 2  # no empty part


@pytest.mark.slow  # ~50 s on the shared CPU: the script in its own process, two spawned workers
def test_gpu_preset_paths_parallel_parts_and_bf16_give_the_same_teacher(
        finished: tuple[ModuleType, Path, Path], tmp_path: Path) -> None:
    """--parts 2 --precision bf16 (the GPU preset's code paths, on the CPU), run as a user runs it: the parts'
    fused rows, concatenated, are the single-process ones; training runs under bfloat16 autocast."""
    from lmfuse.fuse.train import load_fused

    _, work, out = finished
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "ACCELERATE_MIXED_PRECISION": "no"}
    cmd = [sys.executable, "scripts/fusellm_experiment.py", *TINY, "--parts", "2", "--precision", "bf16",
           "--seeds", "1", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    parts = sorted((tmp_path / "w" / "shared").iterdir())
    parted = [r for d in parts for r in load_fused(d / "combine")]
    single = load_fused(work / "shared" / "part-0" / "combine")
    assert len(parts) == 2 and len(parted) == len(single)
    for a, b in zip(parted, single, strict=True):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.topk_ids, b.topk_ids)
        np.testing.assert_allclose(a.topk_logp, b.topk_logp, rtol=1e-5, atol=1e-5)
    result = json.loads((tmp_path / "o" / "results.json").read_text())
    assert result["settings"]["precision"] == "bf16"
    # bfloat16 autocast: the same rows give a slightly different first-step loss than in float32.
    fp32_logs = json.loads((out / "results.json").read_text())["train_logs"]
    bf16, fp32 = result["train_logs"]["plain-s1"][0]["clm"], fp32_logs["plain-s1"][0]["clm"]
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=0.05)
    assert result["runs"]["plain-s1"]["tokens"] == result["teachers"]["tokens"]["target"]


@pytest.mark.slow  # ~40 s on the shared CPU: two runs trained side by side in spawned workers
def test_runs_trained_side_by_side_equal_runs_trained_in_turn(
        finished: tuple[ModuleType, Path, Path], tmp_path: Path) -> None:
    """--jobs 2 trains each run in its own process: the same runs, losses and tokens as one after another."""
    _, _, out = finished
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "ACCELERATE_MIXED_PRECISION": "no"}
    cmd = [sys.executable, "scripts/fusellm_experiment.py", *TINY, "--jobs", "2",
           "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    side_by_side = json.loads((tmp_path / "o" / "results.json").read_text())
    in_turn = json.loads((out / "results.json").read_text())
    assert side_by_side["settings"]["jobs"] == 2
    assert list(side_by_side["train_logs"]) == list(in_turn["train_logs"])
    for name, log in in_turn["train_logs"].items():
        assert [r["clm"] for r in side_by_side["train_logs"][name]] == pytest.approx([r["clm"] for r in log], rel=1e-4)
        assert side_by_side["runs"][name]["tokens"] == in_turn["runs"][name]["tokens"]
    # Each run's time is its own process's: all four are in the cost table.
    assert {k for k in side_by_side["times"] if k.startswith("train ")} == {f"train {n}" for n in in_turn["runs"]}
