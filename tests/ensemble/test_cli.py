"""`lmfuse generate` and `lmfuse score` end to end on tiny members saved as HF directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmfuse.cli.main import main
from lmfuse.models.member import Member


@pytest.fixture(scope="module")
def saved(toy_members: dict[str, Member], tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = []
    for family in ("bytebpe", "sentencepiece"):
        path = tmp_path_factory.mktemp(family)
        toy_members[family].model.save_pretrained(path)
        toy_members[family].tokenizer.save_pretrained(path)
        out.append(str(path))
    return out


def test_generate_explain_and_json(saved: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["generate", "The quick brown", "--model", saved[0], "--model", saved[1], "--max-new-tokens", "5"]
    assert main([*args, "--explain"]) == 0
    captured = capsys.readouterr()
    assert "weight" in captured.err and "<- seed" in captured.err
    assert main([*args, "--json", "--weighting", "packllm-sim"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["n_tokens"] == 5 and record["weights"]["weighting"] == "packllm-sim"
    assert abs(sum(m["weight"] for m in record["weights"]["members"]) - 1) < 1e-5
    assert main([*args, "--stream"]) == 0


def test_score_table_and_errors(saved: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--context", "To be, or not", "--continuation", " to be", "--continuation", " that",
                 "--model", saved[0], "--model", saved[1], "--strategies", "uniform,packllm-opt", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)["loglikelihood"]
    assert set(scores) == {Path(saved[0]).name, Path(saved[1]).name, "pack[uniform]", "pack[packllm-opt]"}
    assert main(["generate", "hi", "--model", saved[0], "--weighting", "packlm-opt"]) == 2
    assert "did you mean" in capsys.readouterr().err.lower()
    assert main(["generate", "hi", "--model", saved[0], "--weighting", "fixed"]) == 2
    assert "--weights" in capsys.readouterr().err


def test_a_prompt_longer_than_a_members_context_is_warned_about(saved: list[str],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    long = "the quick brown fox jumps over the lazy dog " * 80  # beyond the toy members' 256 tokens
    assert main(["generate", long, "--model", saved[0], "--model", saved[1], "--max-new-tokens", "3"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: the prompt is too long for") == 2 and "earlier tokens dropped" in err
    assert main(["score", "--context", long, "--continuation", " yes", "--model", saved[0], "--model", saved[1],
                 "--strategies", "uniform"]) == 0
    assert capsys.readouterr().err.count("warning: the context is too long for") == 2
    assert main(["generate", "short", "--model", saved[0], "--max-new-tokens", "2"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_generate_batches_prompts_and_takes_member_devices(saved: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Several prompts decode together (the same texts as one by one); a member spec names its device and
    dtype; a device this machine lacks is a clear error."""
    prompts = ["The quick brown", "def add(a, b):", "x"]
    base = ["generate", *prompts, "--model", f"{saved[0]},device=cpu,name=a", "--model", f"{saved[1]},dtype=float32",
            "--max-new-tokens", "6", "--json"]
    assert main([*base, "--batch-size", "3", "--parallel", "on"]) == 0
    together = [json.loads(line)["text"] for line in capsys.readouterr().out.strip().splitlines()]
    assert main([*base, "--batch-size", "1", "--parallel", "off"]) == 0
    alone = [json.loads(line)["text"] for line in capsys.readouterr().out.strip().splitlines()]
    assert together == alone and len(alone) == 3
    assert main(["generate", "hi", "--model", f"{saved[0]},device=cuda:7"]) == 2
    err = capsys.readouterr().err
    assert "cuda:7" in err and ("no CUDA GPU" in err or "CUDA GPU(s)" in err)
    assert main(["generate", "hi", "--model", f"{saved[0]},dvice=cpu"]) == 2
    assert "Did you mean 'device'" in capsys.readouterr().err
