from __future__ import annotations

import os
from typing import Any

import torch

from lmfuse.models.member import Member

SAMPLE = "Hello world\n  東京 🙂 café def f(x):\treturn x"


def test_tokenizer_families_really_differ(tokenizers3: dict[str, Any]) -> None:
    pieces = {
        family: tuple(tok.convert_ids_to_tokens(tok(SAMPLE, add_special_tokens=False)["input_ids"]))
        for family, tok in tokenizers3.items()
    }
    assert len(set(pieces.values())) == 3
    assert "Ċ" in pieces["bytebpe"]  # GPT-2 byte alphabet for "\n"
    assert "<0x0A>" in pieces["sentencepiece"]  # byte fallback for "\n"
    assert any(p.startswith("##") for p in pieces["wordpiece"])


def test_logits_are_wider_than_the_tokenizer(toy_members: dict[str, Member]) -> None:
    for member in toy_members.values():
        assert member.logits_width > len(member.tokenizer)
        assert member.logits_width % 64 == 0


def test_score_tokens_rolling_windows_score_every_token_once(toy_members: dict[str, Member]) -> None:
    member = toy_members["sentencepiece"]
    ids = member.encode(SAMPLE * 3).ids
    whole = member.score_tokens(ids)
    assert whole.shape == (len(ids),)
    # Position i predicts token i+1: the first score is log p(ids[0] | prefix token).
    first = member.log_probs([[member.prefix_token_id, ids[0]]])[0][0, ids[0]]
    assert torch.isclose(whole[0], first)
    windowed = member.score_tokens(ids, window=7)
    assert windowed.shape == whole.shape
    # Inside the first window both see the same context, so the scores agree there.
    assert torch.allclose(windowed[:6], whole[:6], atol=1e-5)


def test_toy_tokenizers_are_identical_in_every_process() -> None:
    """A toy member is rebuilt from its spec in each process (multi-process and resumed fuse runs), so
    its vocabulary must not depend on the process (tokenizers' WordPieceTrainer did: hash-map order)."""
    import subprocess
    import sys

    code = ("import json; from lmfuse.models.toy import build_tokenizer, FAMILIES; "
            "print(json.dumps({f: sorted(build_tokenizer(f).get_vocab().items()) for f in FAMILIES}))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2)]
    assert runs[0] == runs[1]
