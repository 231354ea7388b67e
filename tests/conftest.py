"""Shared fixtures: tiny in-process tokenizers of three families and tiny random models. Offline only."""

from __future__ import annotations

import os

# Before any Hugging Face import: tests never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path
from typing import Any

import pytest

from lmfuse import assets
from lmfuse.models.member import Member
from lmfuse.models.toy import FAMILIES, build_model, build_tokenizer

# Real models live in the user's cache (LMFUSE_HOME); unit tests get a fresh empty one each.
REAL_HOME = os.environ.get("LMFUSE_HOME")


_PIP_DOWNLOAD = assets.pip_download


def _refuse_download(archive: assets.Archive, dest: Path) -> Path:
    raise AssertionError(f"an offline test tried to download {archive.requirement}; give it a FakeIndex")


@pytest.fixture(autouse=True)
def _isolated_home(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline tests get an empty $LMFUSE_HOME of their own, and no download can reach a registry."""
    if request.node.get_closest_marker("real") is None:
        monkeypatch.setenv("LMFUSE_HOME", str(tmp_path / "lmfuse-home"))
        monkeypatch.setattr(assets, "pip_download", _refuse_download)


@pytest.fixture
def real_pip_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """For the tests of `pip_download` itself (with `subprocess.run` faked)."""
    monkeypatch.setattr(assets, "pip_download", _PIP_DOWNLOAD)


@pytest.fixture(scope="session")
def tokenizers3() -> dict[str, Any]:
    """One tiny fast tokenizer per family: ``bytebpe``, ``sentencepiece`` (byte fallback), ``wordpiece``."""
    return {family: build_tokenizer(family) for family in FAMILIES}


@pytest.fixture(scope="session")
def toy_members(tokenizers3: dict[str, Any]) -> dict[str, Member]:
    """Three tiny random members, one per tokenizer family; logits padded wider than the vocabulary."""
    archs = {"bytebpe": "gpt2", "sentencepiece": "llama", "wordpiece": "llama"}
    members = {}
    for seed, (family, tok) in enumerate(tokenizers3.items()):
        model = build_model(archs[family], len(tok), seed=seed, pad_to=64)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(model.config, key, getattr(tok, key))
        members[family] = Member(name=f"toy-{family}", tokenizer=tok, model=model, source="toy")
    return members


def real_home() -> Path | None:
    """The cache holding the real default pack, or None when it was never fetched."""
    from lmfuse.paths import lmfuse_home

    home = Path(REAL_HOME).expanduser() if REAL_HOME else lmfuse_home()
    return home if (home / "zoo").is_dir() else None


@pytest.fixture(scope="session")
def tables(tokenizers3: dict[str, Any]) -> dict[str, Any]:
    """The alignment token table of each tiny tokenizer family, built once."""
    from lmfuse.alignment import token_table

    return {family: token_table(tok) for family, tok in tokenizers3.items()}
