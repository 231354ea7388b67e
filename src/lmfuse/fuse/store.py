"""Ragged top-k distributions on disk: safetensors shards with atomic writes, and a manifest.

A *shard* holds N rows (texts) and their tokens, concatenated without padding:

* per-row arrays have shape ``[N]``; ``row_ptr`` (int64 ``[N + 1]``) says that row r owns tokens
  ``row_ptr[r]:row_ptr[r + 1]`` of every per-token array;
* per-token arrays have shape ``[Ntok, ...]`` (e.g. top-k ids ``[Ntok, k]``).

In memory, token ids are ``uint16`` when the vocabulary (logit width) is below 65,535, else ``int32``
(``id_dtype``); "no id" (a freed top-k slot) is ``-1`` after ``unpack_ids``, 65,535 in a uint16 array.

On disk (shard format 2, ``FORMAT``), a per-token ``int32`` array whose values all lie in
``-1 .. 2**24 - 2`` — the ids of any vocabulary below 16.7M entries, Qwen's 151,936 and Gemma's 262,144
included — is stored as 3 little-endian bytes per value (``uint8 [..., 3]``, -1 as ``0xFFFFFF``) and
named in the ``lmfuse.u24`` metadata; ``read_shard`` turns it back into the same ``int32`` array. At
k = 10 that is 3 + 30 bytes of ids per token instead of 4 + 40. Format-1 shards (no ``lmfuse.format``
metadata: every array in its in-memory dtype) still read unchanged; a shard from a newer format is a
``CorruptFileError`` that says so.

Every write goes through ``lmfuse.atomic`` (a uniquely named temporary file, renamed into place), so a killed
process never leaves a half-written shard under the final name, and several processes may write the same
manifest at once; a shard that exists is complete.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmfuse import atomic
from lmfuse.errors import CorruptFileError

UINT16_NONE = np.iinfo(np.uint16).max
U24_NONE = (1 << 24) - 1
"""The 3-byte encoding of -1 ("no id")."""
FORMAT = 2
"""Shard format written by this version (1: arrays in their in-memory dtypes; 2: adds 3-byte ints)."""
_FORMAT_KEY = "lmfuse.format"
_U24_KEY = "lmfuse.u24"


def id_dtype(width: int) -> type[np.integer[Any]]:
    """The smallest id dtype that holds ids ``0 .. width - 1`` plus a "no id" sentinel."""
    return np.uint16 if width < UINT16_NONE else np.int32


def pack_ids(ids: np.ndarray, width: int) -> np.ndarray:
    """int64 ids with ``-1`` for "no id" -> the on-disk dtype for a vocabulary of ``width``."""
    dtype = id_dtype(width)
    if dtype is np.uint16:
        return np.where(ids < 0, UINT16_NONE, ids).astype(np.uint16)
    return ids.astype(np.int32)


def unpack_ids(ids: np.ndarray) -> np.ndarray:
    """On-disk ids -> int64 with ``-1`` for "no id"."""
    if ids.dtype == np.uint16:
        out = ids.astype(np.int64)
        out[ids == UINT16_NONE] = -1
        return out
    return ids.astype(np.int64)


def text_hash(text: str) -> int:
    """A stable signed 63-bit hash of a text, used to check that rows pair with the right text (not by index only)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def write_json(path: Path, obj: Any) -> None:
    atomic.write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"cannot read {str(path)!r}: {exc}") from None


@dataclass
class Shard:
    """One shard in memory. ``rows``: per-row arrays ``[N]``; ``tokens``: per-token arrays ``[Ntok, ...]``."""

    row_ptr: np.ndarray  # int64 [N + 1]
    rows: dict[str, np.ndarray]
    tokens: dict[str, np.ndarray]
    meta: dict[str, str]

    @property
    def num_rows(self) -> int:
        return len(self.row_ptr) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.row_ptr[-1])

    def row(self, r: int, name: str) -> np.ndarray:
        """The per-token array ``name`` restricted to row ``r``: ``[T_r, ...]``."""
        return self.tokens[name][self.row_ptr[r] : self.row_ptr[r + 1]]

    @staticmethod
    def from_rows(rows: dict[str, Any], tokens: dict[str, list[np.ndarray]], meta: dict[str, str],
                  dtypes: dict[str, Any]) -> Shard:
        """Concatenate per-row token arrays (each ``[T_r, ...]``) into one ragged shard."""
        lengths = [len(a) for a in next(iter(tokens.values()))] if tokens else []
        row_ptr = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=row_ptr[1:])
        cat = {}
        for name, parts in tokens.items():
            if [len(p) for p in parts] != lengths:
                raise ValueError(f"per-token array {name!r} has row lengths that differ from the others")
            cat[name] = np.concatenate(parts).astype(dtypes[name]) if parts else np.zeros(0, dtypes[name])
        return Shard(row_ptr, {k: np.asarray(v, dtype=dtypes[k]) for k, v in rows.items()}, cat, meta)


def encode_u24(a: np.ndarray) -> np.ndarray:
    """int32 values in ``-1 .. 2**24 - 2`` -> ``uint8 [..., 3]`` (little-endian, -1 as ``0xFFFFFF``)."""
    v = np.where(a < 0, U24_NONE, a).astype("<u4")
    return np.ascontiguousarray(v.view(np.uint8).reshape(*a.shape, 4)[..., :3])


def decode_u24(b: np.ndarray) -> np.ndarray:
    """``uint8 [..., 3]`` from ``encode_u24`` -> the int32 values, ``0xFFFFFF`` back to -1."""
    four = np.zeros((*b.shape[:-1], 4), dtype=np.uint8)
    four[..., :3] = b
    v = four.view("<u4")[..., 0].astype(np.int32)
    v[v == U24_NONE] = -1
    return v


def fits_u24(a: np.ndarray) -> bool:
    return a.dtype == np.int32 and (a.size == 0 or (int(a.min()) >= -1 and int(a.max()) < U24_NONE))


def encode_shard(shard: Shard) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and metadata written for ``shard`` (format ``FORMAT``), e.g. to count bytes per array."""
    reserved = [k for k in shard.meta if k.startswith("lmfuse.")]
    if reserved:
        raise ValueError(f"shard metadata keys starting with 'lmfuse.' are reserved for the format: {reserved}")
    tensors = {"row_ptr": shard.row_ptr}
    tensors.update({f"row/{k}": np.ascontiguousarray(v) for k, v in shard.rows.items()})
    u24 = sorted(k for k, v in shard.tokens.items() if fits_u24(v))
    for k, v in shard.tokens.items():
        tensors[f"tok/{k}"] = encode_u24(v) if k in u24 else np.ascontiguousarray(v)
    return tensors, {**shard.meta, _FORMAT_KEY: str(FORMAT), _U24_KEY: ",".join(u24)}


def write_shard(path: Path, shard: Shard) -> None:
    """Atomically write a shard as one safetensors file (``row/*``, ``tok/*`` and ``row_ptr`` tensors)."""
    from safetensors.numpy import save

    tensors, meta = encode_shard(shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(path, save(tensors, metadata=meta))


def read_shard(path: Path) -> Shard:
    """A shard as written (format 1 or 2): the same arrays and metadata that were passed to ``write_shard``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = dict(f.metadata() or {})
            data = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    except Exception as exc:  # safetensors raises its own error types for truncated headers
        raise CorruptFileError(f"cannot read shard {str(path)!r}: {exc}") from None
    version = meta.pop(_FORMAT_KEY, "1")
    if version not in ("1", str(FORMAT)):
        raise CorruptFileError(
            f"shard {str(path)!r} has format {version!r}; this lmfuse reads formats 1..{FORMAT} "
            "(upgrade lmfuse, or run the stage again to rewrite it)"
        )
    u24 = [k for k in meta.pop(_U24_KEY, "").split(",") if k]
    if "row_ptr" not in data:
        raise CorruptFileError(f"shard {str(path)!r} has no 'row_ptr' tensor: not an lmfuse shard")
    rows = {k[4:]: v for k, v in data.items() if k.startswith("row/")}
    tokens = {k[4:]: v for k, v in data.items() if k.startswith("tok/")}
    for k in u24:
        enc = tokens.get(k)
        if enc is None or enc.dtype != np.uint8 or enc.ndim < 2 or enc.shape[-1] != 3:
            got = "missing" if enc is None else f"{enc.dtype} {list(enc.shape)}"
            raise CorruptFileError(f"shard {str(path)!r}: 3-byte array {k!r} should be uint8 [..., 3], got {got}")
        tokens[k] = decode_u24(enc)
    return Shard(data["row_ptr"], rows, tokens, meta)


def shard_path(directory: Path, index: int) -> Path:
    return directory / f"shard-{index:05d}.safetensors"


def list_shards(directory: Path, num_shards: int) -> list[Path]:
    """All shard paths of a stage, raising when any is missing (the stage is unfinished)."""
    paths = [shard_path(directory, i) for i in range(num_shards)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise CorruptFileError(
            f"{str(directory)!r} is unfinished: {len(missing)} of {num_shards} shards missing "
            f"(first: {missing[0]}); run the stage again to resume"
        )
    return paths


def stage_done(directory: Path) -> bool:
    """A stage directory is finished when its manifest says so (written last, atomically)."""
    manifest = directory / "manifest.json"
    return manifest.is_file() and bool(read_json(manifest).get("complete"))


def check_config(directory: Path, config: dict[str, Any]) -> None:
    """Refuse to resume a stage with a different configuration than the one that started it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    if path.is_file():
        old = read_json(path)
        if old != json.loads(json.dumps(config)):
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise CorruptFileError(
                f"{str(directory)!r} was started with a different configuration (keys {diff}); "
                "delete it or use another output_dir"
            )
    else:
        write_json(path, config)
