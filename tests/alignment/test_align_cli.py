"""`lmfuse align inspect` on tiny tokenizers saved to disk, and its errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lmfuse.cli.main import main


@pytest.fixture(scope="module")
def saved(tokenizers3: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for family, tok in tokenizers3.items():
        path = tmp_path_factory.mktemp(family)
        tok.save_pretrained(str(path))
        out[family] = path
    return out


def test_inspect_prints_the_report(saved: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["align", "inspect", str(saved["bytebpe"]), str(saved["sentencepiece"])]) == 0
    text = capsys.readouterr().out
    assert "vocabulary sizes" in text and "exact-match coverage" in text and "MinED coverage" in text
    assert "byte tokens mapped" in text and "1:1 share" in text
    assert "special tokens mapped  4 / 4" in text


def test_inspect_json_and_text_file(saved: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    sample = tmp_path / "sample.txt"
    sample.write_text("the stack of items\nover the lazy dog\n", encoding="utf-8")
    assert main(["align", "inspect", str(saved["wordpiece"]), str(saved["bytebpe"]), "--text", str(sample),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["a_to_b"]["src_size"] == 400
    assert 0 < report["sequence"]["one_to_one_share"] <= 1
    assert report["b_to_a"]["bytes_ok"][0] == 0  # WordPiece has no byte tokens to receive them


def test_unknown_name_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["align", "inspect", "no-such-model", "smollm2"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'no-such-model'" in err and "smollm2" in err


def test_missing_text_file(saved: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["align", "inspect", str(saved["bytebpe"]), str(saved["bytebpe"]), "--text", "/nonexistent"]) == 2
    assert "--text" in capsys.readouterr().err
