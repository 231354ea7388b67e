"""Bad bytes on the command line: a clear one-line error (exit 2) before anything loads."""

from __future__ import annotations

import pytest

from lmfuse.cli.main import main

# What Python makes of the bytes b"\xff\xfe abc" in argv on a UTF-8 system (surrogateescape).
NOT_UTF8 = b"\xff\xfe abc".decode("utf-8", "surrogateescape")


@pytest.mark.parametrize("argv", [
    ["generate", NOT_UTF8],
    ["score", "--context", NOT_UTF8, "--continuation", " x"],
    ["eval", "--model", "x", "--task", "text:" + NOT_UTF8],
    ["align", "inspect", "smollm2", NOT_UTF8],
])
def test_arguments_that_are_not_utf8_are_one_clear_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is not valid UTF-8 (byte 0xff at position" in err and err.count("\n") == 1
    assert "Traceback" not in err
