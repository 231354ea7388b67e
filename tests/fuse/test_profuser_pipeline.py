"""ProFuser end to end on the shipped tiny recipe (toy members), and resume after a crash in generation."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from lmfuse.cli.main import main
from lmfuse.errors import InputError
from lmfuse.fuse import store
from lmfuse.fuse.members import resolve_member
from lmfuse.fuse.pipeline import Run
from lmfuse.fuse.profuser import read_winners
from lmfuse.fuse.recipe import load_recipe
from lmfuse.models.load import load_member
from lmfuse.registry import UnknownNameError

ROOT = Path(__file__).parents[2]
RECIPE = ROOT / "recipes/profuser-tiny.yaml"
CANDIDATES = ["target", "bytebpe", "bytebpe-llama"]  # the vote's and MinCE's tie order: target first


@contextmanager
def _in_repo() -> Iterator[None]:
    # The shipped recipe's data paths are relative to the repository root, as documented.
    old = Path.cwd()
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profuser") / "run"
    with _in_repo():
        assert main(["fuse", "run", str(RECIPE), "--quiet", "--set", f"output_dir={path}"]) == 0
    return path


def _replies(out: Path, name: str) -> list[str]:
    shards = sorted((out / "generate" / name).glob("shard-*.json"))
    return [r for p in shards for r in json.loads(p.read_text())["response"]]


def test_tiny_recipe_runs_end_to_end_with_the_two_stage_schedule(out: Path) -> None:
    for stage in ["reward", "train-mode/combine", *(f"generate/{c}" for c in CANDIDATES)]:
        assert store.stage_done(out / stage), stage
    trained = load_member(out / "train/model")
    original = resolve_member(load_recipe(RECIPE).target)
    assert trained.tokenizer.get_vocab() == original.tokenizer.get_vocab()
    before, after = original.model.state_dict(), trained.model.state_dict()
    assert sum(not torch.equal(before[k], after[k]) for k in before) >= len(before) // 2
    log = [json.loads(line) for line in (out / "train/train_log.jsonl").read_text().splitlines()]
    assert [(r["w_infer"], r["w_train"]) for r in log] == [(1.0, 0.0)] * 3 + [(0.1, 1.0)] * 3
    assert all(r["train_clm"] == 0.0 for r in log[:3]) and all(r["train_clm"] > 0 for r in log[3:])
    assert all(np.isfinite(r["loss"]) and r["infer_clm"] > 0 for r in log)
    manifest = store.read_json(out / "reward/manifest.json")
    assert sum(manifest["wins"].values()) == 12 and manifest["mean_chars"]["reference"] > 0
    summary = store.read_json(out / "summary.json")
    for mode in ("inference_mode", "training_mode"):
        assert set(summary[mode]["wins"]) == set(CANDIDATES) and sum(summary[mode]["wins"].values()) == 12
        assert sum(summary[mode]["share"].values()) == pytest.approx(1.0)
    assert set(summary["inference_mode"]["mean_scores"]) == {"exact-match", "chrf"}


def test_training_mode_teacher_is_the_lowest_response_ce(out: Path) -> None:
    fused = store.read_shard(out / "train-mode/combine/shard-00000.safetensors")
    aligned = [store.read_shard(out / f"train-mode/align/{c}/shard-00000.safetensors") for c in CANDIDATES]
    per_byte = np.stack([a.rows["nll_sum"] / a.rows["n_bytes"] for a in aligned])  # response only, per byte
    np.testing.assert_array_equal(fused.rows["weights"].argmax(1), per_byte.argmin(0))
    # The rows are the reference responses in the target's tokens, not the prompts.
    examples = [json.loads(line) for line in (ROOT / "recipes/data/tiny-instruct.jsonl").read_text().splitlines()]
    hashes = [store.text_hash(e["answer"]) for e in examples[: fused.num_rows]]
    assert fused.rows["hash"].tolist() == hashes


def test_inference_mode_rows_are_the_winners_replies_with_their_own_distributions(out: Path) -> None:
    winners = read_winners(out / "reward")
    covered = []
    for name in CANDIDATES:
        view = out / "infer-mode" / name
        keys = [i for i, w in enumerate(winners) if w == name and _replies(out, name)[i].strip()]
        assert view.is_dir() == bool(keys), name
        if not keys:
            continue
        covered += keys
        replies = _replies(out, name)
        ext = store.read_shard(view / "extract" / name / "shard-00000.safetensors")
        assert ext.meta["member"] == name  # the winner itself re-reads its reply
        assert ext.rows["hash"].tolist() == [store.text_hash(replies[k]) for k in keys[: ext.num_rows]]
        fused = store.read_shard(view / "combine/shard-00000.safetensors")
        assert fused.meta["candidates"] == name  # one candidate: the winner's own top-k is the teacher
        if name == "target":  # same vocabulary: the teacher is the target's own top-k, renormalised
            ids = store.unpack_ids(ext.tokens["topk_ids"])
            got = store.unpack_ids(fused.tokens["topk_ids"])
            assert all(set(got[t][got[t] >= 0]) == set(ids[t]) for t in range(len(ids)))
    assert len(covered) == len(set(covered)) and len(covered) >= 10  # each example in at most one view
    assert len(set(winners)) >= 2  # the toy members do win different prompts


def test_finished_stages_are_skipped(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = [out / "generate/target/shard-00000.json", out / "reward/shard-00000.json",
             out / "train-mode/combine/shard-00000.safetensors", out / "train/model/config.json"]
    stamps = [f.stat().st_mtime_ns for f in files]
    with _in_repo():
        assert main(["fuse", "run", str(RECIPE), "--quiet", "--set", f"output_dir={out}"]) == 0
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert "fused model:" in capsys.readouterr().out


def test_generation_resumes_after_a_crash_to_the_same_replies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sets = ["generate.do_sample=true", "generate.temperature=1.0", "generate.rows_per_shard=2",
            "generate.max_new_tokens=8", "data.limit=6"]
    with _in_repo():
        straight = Run(load_recipe(RECIPE, [*sets, f"output_dir={tmp_path / 'a'}"]), progress=False)
        straight.run(("generate", "reward"))
        crashed = Run(load_recipe(RECIPE, [*sets, f"output_dir={tmp_path / 'b'}"]), progress=False,
                      members=straight._members)
        real_write = store.write_json
        written: list[Path] = []

        def kill_on_second_shard(path: Path, obj: object) -> None:
            if path.name.startswith("shard-") and len(written) == 1:
                raise KeyboardInterrupt("simulated kill")
            if path.name.startswith("shard-"):
                written.append(path)
            real_write(path, obj)

        monkeypatch.setattr(store, "write_json", kill_on_second_shard)
        with pytest.raises(KeyboardInterrupt):
            crashed.run(("generate",))
        monkeypatch.setattr(store, "write_json", real_write)
        first = tmp_path / "b/generate/target"
        assert not store.stage_done(first) and [p.name for p in first.glob("shard-*")] == ["shard-00000.json"]
        stamp = (first / "shard-00000.json").stat().st_mtime_ns
        # A new run, as after a restart: members rebuilt from their specs, resumes at the first missing shard.
        resumed = Run(load_recipe(RECIPE, [*sets, f"output_dir={tmp_path / 'b'}"]), progress=False)
        resumed.run(("generate", "reward"))
    assert (first / "shard-00000.json").stat().st_mtime_ns == stamp
    for name in CANDIDATES:
        a, b = tmp_path / "a/generate" / name, tmp_path / "b/generate" / name
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        for p in a.glob("shard-*.json"):
            assert p.read_text() == (b / p.name).read_text(), (name, p.name)
        manifest = store.read_json(b / "manifest.json")
        assert manifest["do_sample"] is True and manifest["seed"] == 0 and manifest["complete"]
    assert read_winners(tmp_path / "a/reward") == read_winners(tmp_path / "b/reward")
    # Sampling really samples: a different seed draws different replies.
    with _in_repo():
        other = Run(load_recipe(RECIPE, [*sets, "generate.seed=7", f"output_dir={tmp_path / 'c'}"]), progress=False,
                    members=straight._members)
        other.run(("generate",))
    assert _replies(tmp_path / "c", "target") != _replies(tmp_path / "a", "target")


def test_method_and_data_format_must_agree(tmp_path: Path) -> None:
    base = "name: x\noutput_dir: o\ntarget: toy:bytebpe\nsources: [toy:wordpiece]\n"
    path = tmp_path / "r.yaml"
    path.write_text(base + "method: profuser\ndata: {path: c.txt}\n")
    with pytest.raises(InputError, match=r"data\.format: instruct"):
        load_recipe(path)
    path.write_text(base + "data: {path: c.jsonl, format: instruct}\n")
    with pytest.raises(InputError, match="train-only"):
        load_recipe(path)
    path.write_text(base + "method: profuse\ndata: {path: c.txt}\n")
    with pytest.raises(InputError, match="Did you mean 'profuser'"):
        load_recipe(path)
    path.write_text(base + "method: profuser\ndata: {path: c.jsonl, format: instruct}\nrewards: [chrff]\n")
    with pytest.raises(UnknownNameError, match="Did you mean 'chrf'"):
        load_recipe(path)
    path.write_text(base + "method: profuser\ndata: {path: c.jsonl, format: instruct}\nschedule: {name: revers}\n")
    with pytest.raises(UnknownNameError, match="Did you mean 'reverse'"):
        load_recipe(path)
