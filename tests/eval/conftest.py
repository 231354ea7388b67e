"""Fixtures shared by the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmfuse.models.member import Member


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory: pytest.TempPathFactory, toy_members: dict[str, Member]) -> Path:
    """A toy member saved as a Hugging Face directory, as a user's ``--model DIR``."""
    member = toy_members["sentencepiece"]
    path = tmp_path_factory.mktemp("toy-model")
    member.model.save_pretrained(path)
    member.tokenizer.save_pretrained(path)
    return path
