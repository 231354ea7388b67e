"""Load a member from a zoo name, a local HF directory, a GGUF file, or a hub id (only when online)."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmfuse.errors import ModelLoadError, one_line
from lmfuse.models import zoo
from lmfuse.models.dtypes import resolve_dtype
from lmfuse.models.gguf import load_gguf
from lmfuse.models.member import Member

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class Location:
    """Where a member spec points, resolved without loading anything."""

    kind: str  # "hf" (a HF directory or hub id) or "gguf"
    path: str  # the HF directory or hub id; for "gguf", the directory holding the file
    gguf_file: str | None
    name: str  # the member's default name
    source: str  # provenance, as results files record it
    local_files_only: bool = True


def locate(spec: str | Path) -> Location:
    """Resolve a member spec, in order: a default-pack (zoo) name; a ``.gguf`` file; a directory holding a
    HF model (``config.json``), exactly one ``.gguf`` file, or only a tokenizer (``tokenizer.json``); a hub
    id ``org/name`` (from the local HF cache when ``HF_HUB_OFFLINE=1``, else downloaded by transformers).
    """
    text = str(spec)
    if text in zoo.ZOO:
        path = zoo.converted_path(text)
        if path is None:
            state = "incomplete (an interrupted fetch)" if zoo.zoo_dir(text).exists() else "not installed yet"
            raise ModelLoadError(f"default-pack member {text!r} is {state}; run `lmfuse zoo fetch {text}` first")
        return Location("hf", str(path), None, text, f"zoo:{text}")
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"model file {text!r} is not a .gguf file; give a GGUF file or a HF model directory")
        return Location("gguf", str(path.parent), path.name, path.stem, f"gguf:{path}")
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if (path / "config.json").is_file() or ((path / "tokenizer.json").is_file() and not ggufs):
            return Location("hf", str(path), None, path.name, str(path))
        if len(ggufs) == 1:
            return Location("gguf", str(path), ggufs[0].name, ggufs[0].stem, f"gguf:{ggufs[0]}")
        raise ModelLoadError(
            f"directory {text!r} holds no config.json and {len(ggufs)} .gguf files; "
            "give a HF model directory or a single GGUF file"
        )
    if _HUB_ID.match(text):
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        return Location("hf", text, None, text.split("/")[-1], f"hub:{text}", local_files_only=offline)
    close = difflib.get_close_matches(text, list(zoo.ZOO), n=2, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ModelLoadError(
        f"unknown model {text!r}: not a file, not a directory, not a hub id (org/name), "
        f"and not a default-pack member ({', '.join(zoo.ZOO)}).{hint}"
    )


def load_member(
    spec: str | Path, name: str | None = None, dtype: str | torch.dtype = "float32", device: str = "cpu"
) -> Member:
    """Load one member from a spec as ``locate`` resolves it."""
    torch_dtype = resolve_dtype(dtype)
    where = locate(spec)
    if where.kind == "gguf":
        assert where.gguf_file is not None
        return _from_gguf(Path(where.path) / where.gguf_file, name or where.name, torch_dtype, device)
    return _from_hf_dir(where, name or where.name, torch_dtype, device)


def load_tokenizer(spec: str | Path) -> Any:
    """Only the tokenizer of a member spec (no weights are read)."""
    from transformers import AutoTokenizer

    where = locate(spec)
    try:
        return AutoTokenizer.from_pretrained(where.path, gguf_file=where.gguf_file,
                                             local_files_only=where.local_files_only)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"could not load a tokenizer from {where.source!r}: {one_line(exc)}") from None


def _from_hf_dir(where: Location, name: str, dtype: torch.dtype, device: str) -> Member:
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = where.local_files_only
    try:
        tok = AutoTokenizer.from_pretrained(where.path, local_files_only=local)
        model = AutoModelForCausalLM.from_pretrained(where.path, dtype=dtype, local_files_only=local)
    except (OSError, ValueError, KeyError, SafetensorError) as exc:  # a truncated or garbled weights file
        what = f"model {where.path!r}"
        if where.source.startswith("hub:"):
            mode = "offline (HF_HUB_OFFLINE=1), so only the local HF cache was searched" if local else "online"
            what = f"hub model {where.path!r} ({mode})"
        raise ModelLoadError(f"could not load {what}: {one_line(exc)}") from None
    return _member(name, tok, model, device, where.source)


def _from_gguf(path: Path, name: str, dtype: torch.dtype, device: str) -> Member:
    tok, model = load_gguf(path, dtype)
    return _member(name, tok, model, device, f"gguf:{path}")


def _member(name: str, tok: Any, model: Any, device: str, source: str) -> Member:
    if not getattr(tok, "is_fast", False):
        raise ModelLoadError(
            f"model {name!r}: tokenizer {type(tok).__name__} is not a fast (tokenizers-backed) tokenizer; "
            "lmfuse needs character offsets for cross-tokenizer alignment"
        )
    model.to(device)
    model.eval()
    return Member(name=name, tokenizer=tok, model=model, source=source)
