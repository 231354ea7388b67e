"""The one sharded, resumable stage loop: shards split over processes, finished shards skipped, manifest last."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmfuse.errors import CorruptFileError, InputError
from lmfuse.fuse import store
from lmfuse.fuse.sharded import sharded_stage


def _writer(made: list[int]):  # type: ignore[no-untyped-def]
    def make(s: int, path: Path) -> None:
        made.append(s)
        store.write_json(path, {"shard": s})

    return make


def test_two_processes_share_the_shards_and_the_last_one_writes_the_manifest(tmp_path: Path) -> None:
    config = {"stage": "test", "format": 1}
    first: list[int] = []
    assert not sharded_stage(tmp_path, config, 5, _writer(first), split=(2, 0), progress=False)
    assert first == [0, 2, 4] and not (tmp_path / "manifest.json").exists()
    second: list[int] = []
    assert sharded_stage(tmp_path, config, 5, _writer(second), split=(2, 1), progress=False,
                         manifest=lambda: {"summary": 7})
    assert second == [1, 3]
    assert store.read_json(tmp_path / "manifest.json") == {**config, "num_shards": 5, "summary": 7, "complete": True}
    again: list[int] = []
    assert sharded_stage(tmp_path, config, 5, _writer(again), progress=False)  # resumed: nothing left to do
    assert again == []


def test_a_killed_stage_resumes_at_its_first_missing_shard(tmp_path: Path) -> None:
    made: list[int] = []
    write = _writer(made)

    def dies_at_shard_2(s: int, path: Path) -> None:
        if s == 2:
            raise KeyboardInterrupt("simulated kill")
        write(s, path)

    with pytest.raises(KeyboardInterrupt):
        sharded_stage(tmp_path, {"stage": "test"}, 4, dies_at_shard_2, progress=False)
    assert made == [0, 1] and not store.stage_done(tmp_path)
    assert sharded_stage(tmp_path, {"stage": "test"}, 4, write, progress=False)
    assert made == [0, 1, 2, 3] and store.stage_done(tmp_path)


def test_other_settings_and_bad_shard_indices_are_refused(tmp_path: Path) -> None:
    sharded_stage(tmp_path, {"stage": "test", "k": 1}, 1, _writer([]), progress=False)
    with pytest.raises(CorruptFileError, match="different configuration"):
        sharded_stage(tmp_path, {"stage": "test", "k": 2}, 1, _writer([]), progress=False)
    with pytest.raises(InputError, match=r"shard_index 2 is outside 0\.\.1"):
        sharded_stage(tmp_path / "other", {"stage": "test"}, 1, _writer([]), split=(2, 2), progress=False)
    assert not (tmp_path / "other").exists()
