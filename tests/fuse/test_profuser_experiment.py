"""`scripts/profuser_experiment.py` end to end on the tiny recipe: variants share stages, report is written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_script() -> object:
    spec = importlib.util.spec_from_file_location("profuser_experiment", ROOT / "scripts" / "profuser_experiment.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_experiment_trains_variants_on_shared_stages_and_reports(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    script = load_script()
    args = ["recipes/profuser-tiny.yaml", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
            "--set", "data.offset=3", "--set", "data.limit=4", "--set", "train.epochs=1",
            "--variants", "profuser,sft", "--held-out", "3", "--max-new-tokens", "4"]
    assert script.main(args) == 0  # type: ignore[attr-defined]
    # SFT reused ProFuser's generations instead of generating again.
    assert (tmp_path / "work" / "sft" / "generate").is_dir()
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(result["summary"]) == ["original", "profuser", "sft"]
    for name, row in result["summary"].items():
        assert row["n"] == 3 and row["bpb"] > 0, name
    assert result["summary"]["sft"]["nats_per_byte_vs_original"][0] != 0  # training changed the target
    assert "| sft |" in (tmp_path / "out" / "report.md").read_text()
    with pytest.raises(SystemExit):
        script.main([*args[:5], "--held-out", "9"])  # type: ignore[attr-defined]
