"""Combine and train on the prepared run: MinCE weights, one step moves the target only, exact resume."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lmfuse.errors import CorruptFileError, InputError
from lmfuse.fuse import store
from lmfuse.fuse.train import train
from lmfuse.models.load import load_member


def test_min_ce_weights_follow_the_byte_normalised_ce(prepared) -> None:  # type: ignore[no-untyped-def]
    out = prepared.out
    names = ["bytebpe", "sentencepiece", "wordpiece"]  # target first
    fused = store.read_shard(out / "combine/shard-00000.safetensors")
    per_byte = np.stack([
        (lambda s: s.rows["nll_sum"] / s.rows["n_bytes"])(store.read_shard(out / f"align/{n}/shard-00000.safetensors"))
        for n in names
    ])
    np.testing.assert_array_equal(fused.rows["weights"].argmax(1), per_byte.argmin(0))
    assert set(np.unique(fused.rows["weights"])) <= {0.0, 1.0}
    # The fused teacher is the winner's aligned entry, renormalised over its k.
    r = 0
    win = names[int(per_byte[:, r].argmin())]
    al = store.read_shard(out / f"align/{win}/shard-00000.safetensors")
    f_ids, a_ids = store.unpack_ids(fused.row(r, "topk_ids")), store.unpack_ids(al.row(r, "topk_ids"))
    f_lp, a_lp = fused.row(r, "topk_logp").astype(np.float32), al.row(r, "topk_logp").astype(np.float32)
    for t in range(len(f_ids)):  # same support and probabilities (order can differ where fp16 values tie)
        a_p = np.exp(a_lp[t][a_ids[t] >= 0])
        got = dict(zip(f_ids[t][f_ids[t] >= 0].tolist(), np.exp(f_lp[t][f_ids[t] >= 0]).tolist(), strict=True))
        want = dict(zip(a_ids[t][a_ids[t] >= 0].tolist(), (a_p / a_p.sum()).tolist(), strict=True))
        assert got.keys() == want.keys()
        assert list(got.values()) == pytest.approx([want[i] for i in got], abs=2e-3)


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_one_step_changes_the_target_and_no_source(prepared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = prepared.members["bytebpe"]
    before = _params(target.model)
    cfg = replace(prepared.recipe.train, max_steps=1)
    final = train(target, prepared.out / "combine", tmp_path / "train", cfg, progress=False)
    trained = load_member(final)
    after = _params(trained.model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) >= len(before) // 2
    for name, member in prepared.members.items():  # the members in memory (sources and target) are untouched
        state = member.model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in prepared.source_state[name].items()), name
    assert trained.tokenizer.get_vocab() == target.tokenizer.get_vocab()
    assert trained.logits_width == target.logits_width


def test_every_step_learns_warm_up_included(prepared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """transformers' warm-up starts at lr 0: the first step must not be spent at that rate."""
    cfg = replace(prepared.recipe.train, max_steps=3, warmup_ratio=0.5)  # 2 warm-up steps
    train(prepared.members["bytebpe"], prepared.out / "combine", tmp_path / "t", cfg, progress=False)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "t/train_log.jsonl").read_text().splitlines()]
    assert lrs[0] == pytest.approx(cfg.lr / 2) and lrs[1] == pytest.approx(cfg.lr)
    assert 0 < lrs[2] < cfg.lr


def test_train_resumes_after_a_crash_to_the_same_model(prepared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = prepared.members["bytebpe"]
    cfg = replace(prepared.recipe.train, max_steps=3, save_every=1)
    straight = train(target, prepared.out / "combine", tmp_path / "a", cfg, progress=False)

    def crash(step: int, logs: dict[str, float]) -> None:
        if step == 2:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        train(target, prepared.out / "combine", tmp_path / "b", cfg, progress=False, on_step=crash)
    assert not (tmp_path / "b/model").exists()
    resumed = train(target, prepared.out / "combine", tmp_path / "b", cfg, progress=False)
    a = load_member(straight).model.state_dict()
    b = load_member(resumed).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_a = (tmp_path / "a/train_log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "b/train_log.jsonl").read_text().splitlines()
    assert [line.split('"tokens_per_s"')[0] for line in log_a] == [line.split('"tokens_per_s"')[0] for line in log_b]


def test_train_log_holds_each_step_once_after_resumes(prepared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Steps logged after the last checkpoint run again on resume: the log keeps each step once."""
    target = prepared.members["bytebpe"]
    cfg = replace(prepared.recipe.train, max_steps=3, save_every=2, log_every=1)

    def crash(step: int, logs: dict[str, float]) -> None:
        if step == 1:  # logged, not checkpointed
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        train(target, prepared.out / "combine", tmp_path / "run", cfg, progress=False, on_step=crash)
    train(target, prepared.out / "combine", tmp_path / "run", cfg, progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run/train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


class Payload:
    """A pickle that runs code when it is loaded: it creates the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_resuming_never_unpickles_what_a_run_directory_holds(prepared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A payload planted in every pickle file of a checkpoint (accelerate's custom object, random states,
    optimizer, scheduler) does not run on resume; the run resumes from the step it recorded."""
    import pickle

    target = prepared.members["bytebpe"]
    cfg = replace(prepared.recipe.train, max_steps=3, save_every=1)

    def crash(step: int, logs: dict[str, float]) -> None:
        if step == 2:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        train(target, prepared.out / "combine", tmp_path / "run", cfg, progress=False, on_step=crash)
    (checkpoint,) = (tmp_path / "run/checkpoints").glob("step-*")
    assert not list(checkpoint.glob("custom_checkpoint_*.pkl"))  # nothing of ours is pickled
    marker = tmp_path / "pwned"
    states = (checkpoint / "random_states_0.pkl").read_bytes()
    (checkpoint / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CorruptFileError, match=r"custom_checkpoint_0\.pkl, which lmfuse does not write"):
        train(target, prepared.out / "combine", tmp_path / "run", cfg, progress=False)
    (checkpoint / "custom_checkpoint_0.pkl").unlink()
    (checkpoint / "random_states_0.pkl").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CorruptFileError, match=r"random states \(random_states_0\.pkl\) cannot be restored"):
        train(target, prepared.out / "combine", tmp_path / "run", cfg, progress=False)
    (checkpoint / "optimizer.bin").write_bytes(pickle.dumps(Payload(marker)))
    (checkpoint / "random_states_0.pkl").write_bytes(states)
    with pytest.raises(CorruptFileError, match=r"cannot resume from .*UnpicklingError"):  # weights_only refuses it
        train(target, prepared.out / "combine", tmp_path / "run", cfg, progress=False)
    assert not marker.exists()
    weights = next(checkpoint.glob("model*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated checkpoint
    with pytest.raises(CorruptFileError, match="cannot resume from"):
        train(target, prepared.out / "combine", tmp_path / "run", cfg, progress=False)


def test_resuming_with_changed_settings_is_refused_naming_them(prepared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A finished extract made with top_k=K must not be reused under another top_k; the refusal names the
    setting and leaves recipe.resolved.yaml as it was. Settings of later stages only do not block."""
    from lmfuse.fuse.pipeline import Run

    resolved = prepared.out / "recipe.resolved.yaml"
    before = resolved.read_text()
    old_k = prepared.recipe.extract.top_k
    changed = replace(prepared.recipe, extract=replace(prepared.recipe.extract, top_k=old_k + 3))
    run = Run(changed, members=prepared.members, progress=False, num_shards=1, shard_index=0)
    with pytest.raises(InputError, match=rf"extract\.top_k: {old_k} then, {old_k + 3} now"):
        run.run(("extract", "align", "combine"))
    assert resolved.read_text() == before
    later = replace(prepared.recipe, train=replace(prepared.recipe.train, lr=prepared.recipe.train.lr * 2))
    Run(later, members=prepared.members, progress=False, num_shards=1, shard_index=0).run(("extract", "align",
                                                                                            "combine"))
    assert "lr" in resolved.read_text()
    prepared.run.run(("extract", "align", "combine"))  # back to the settings the stages were made with


def test_finished_stages_are_skipped(prepared) -> None:  # type: ignore[no-untyped-def]
    shard = prepared.out / "combine/shard-00000.safetensors"
    stamp = shard.stat().st_mtime_ns
    # What a kill -9 during atomic writes leaves behind: removed when the run starts again.
    orphans = [prepared.out / "combine/.shard-00001.safetensors.k3j2.tmp", prepared.out / ".manifest.json.x9.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"half")
    prepared.run.run(("extract", "align", "combine"))
    assert shard.stat().st_mtime_ns == stamp
    assert (prepared.out / "recipe.resolved.yaml").is_file()
    assert not any(o.exists() for o in orphans) and not list(prepared.out.rglob(".*.tmp"))


def test_token_level_min_ce_picks_the_best_aligned_candidate_per_token(prepared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from lmfuse.fuse.combine import CombineConfig, combine

    out = prepared.out
    names = ["bytebpe", "sentencepiece", "wordpiece"]
    fused_dir = combine([out / "align" / n for n in names], out / "extract/bytebpe", tmp_path / "tok",
                        CombineConfig(function="min-ce", granularity="token"), progress=False)
    fused = store.read_shard(fused_dir / "shard-00000.safetensors")
    als = [store.read_shard(out / f"align/{n}/shard-00000.safetensors") for n in names]
    scores = np.stack([np.where(a.tokens["aligned"] > 0, a.tokens["score"].astype(np.float32), np.inf) for a in als])
    best = scores.argmin(0)  # first minimum: ties go to the target
    cand_ids = [store.unpack_ids(a.tokens["topk_ids"]) for a in als]
    got = store.unpack_ids(fused.tokens["topk_ids"])
    for t, m in enumerate(best):  # the same support (order can differ where fp16 log-probs tie)
        assert sorted(set(got[t][got[t] >= 0])) == sorted(set(cand_ids[m][t][cand_ids[m][t] >= 0])), t
    assert len(set(best.tolist())) > 1  # the choice really varies from token to token


class FakeState:
    """accelerate's process state as one process of a 2-process launch sees it."""

    def __init__(self, main: bool) -> None:
        self.is_main_process = main
        self.num_processes, self.process_index = 2, 0 if main else 1
        self.device = torch.device("cpu")
        self.barriers = 0

    def wait_for_everyone(self) -> None:
        self.barriers += 1


@pytest.mark.parametrize("main", [True, False])
def test_main_only_stages_and_start_up_run_on_the_main_process(prepared, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                                               main: bool) -> None:
    """align and combine (and the start-up checks and writes) run on the main process only; every process
    passes the same barriers, one before each stage and one at the end."""
    from lmfuse.fuse import dist, stages
    from lmfuse.fuse.pipeline import Run

    state = FakeState(main)
    monkeypatch.setattr(dist, "process_state", lambda: state)
    ran: list[str] = []
    monkeypatch.setattr(stages, "align", lambda run, views: ran.append("align"))
    monkeypatch.setattr(stages, "combine", lambda run, views: ran.append("combine"))
    resolved = prepared.out / "recipe.resolved.yaml"
    stamp = resolved.stat().st_mtime_ns
    Run(prepared.recipe, members=prepared.members, progress=False).run(("align", "combine"))
    assert ran == (["align", "combine"] if main else [])
    assert state.barriers == 4 + 1  # one per FuseLLM stage, one at the end
    assert (resolved.stat().st_mtime_ns != stamp) == main


def test_a_single_stage_from_the_cli_checks_the_settings_like_a_run(prepared, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from lmfuse.cli.main import main
    from lmfuse.fuse.recipe import to_dict

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(to_dict(prepared.recipe)))
    assert main(["fuse", "combine", str(path), "--quiet"]) == 0  # finished: skipped
    assert "fused model" not in capsys.readouterr().out  # no model was trained
    assert main(["fuse", "combine", str(path), "--quiet", "--set", "extract.top_k=99"]) == 2
    assert "extract.top_k: 6 then, 99 now" in capsys.readouterr().err


def test_settings_a_recipe_type_does_not_have_do_not_block_a_resume(prepared) -> None:  # type: ignore[no-untyped-def]
    """A resolved FuseLLM recipe written before the recipe types were split holds ProFuser's sections too."""
    import yaml

    resolved = prepared.out / "recipe.resolved.yaml"
    before = resolved.read_text()
    old = yaml.safe_load(before)
    old.update(generate={"max_new_tokens": 256}, rewards=[{"name": "chrf"}], vote="majority",
               schedule={"name": "two-stage"})
    resolved.write_text(yaml.safe_dump(old, sort_keys=False))
    prepared.run.run(("extract", "align", "combine"))
    assert resolved.read_text() == before
