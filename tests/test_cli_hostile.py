"""At least 100 bad command lines, in-process through the CLI's entry function: each exits 2 with one clear
error line and no traceback, and leaves no file behind (issue 16). Everything fails before a model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmfuse.cli.main import main

NOT_UTF8 = b"\xff\xfe abc".decode("utf-8", "surrogateescape")
RECIPE = "name: x\noutput_dir: OUT\ntarget: toy:bytebpe\nsources: [toy:sentencepiece]\ndata: {path: c.txt}\n"
BAD_RECIPES = {
    "yaml": "name: [unclosed\n",
    "list": "- a\n- b\n",
    "unknown-key": RECIPE + "train: {lm_wieght: 0.5}\n",
    "lm-weight": RECIPE + "train: {lm_weight: 1.5}\n",
    "grad-accum": RECIPE + "train: {grad_accum: many}\n",
    "epochs": RECIPE + "train: {epochs: 100000000}\n",
    "max-steps": RECIPE + "train: {max_steps: -3}\n",
    "fusion": RECIPE + "combine: {function: mince}\n",
    "fallback": RECIPE + "align: {fallback: one-hott}\n",
    "toy": RECIPE.replace("toy:sentencepiece", "toy:klingon"),
    "slug": RECIPE.replace("[toy:sentencepiece]", "[{model: toy:sentencepiece, name: ../../x}]"),
    "dup": RECIPE.replace("toy:sentencepiece", "toy:bytebpe"),
    "method": RECIPE + "method: fusellm2\n",
}
JSONL_LINES = ["not json", "[1, 2]", '{"input": "q"}', '{"input": "q", "choices": ["a"], "target": 0}',
               '{"input": "q", "choices": ["a", "b"], "target": 5}', '{"input": 3, "choices": ["a", "b"], "target": 0}',
               '{"input": "q", "choices": "ab", "target": 0}', '{"input": "q", "choices": ["a", "b"], "target": true}']
TASKS = ["bigbnch:navigate", "bigbench:navigat", "bbh:navigat", "mc:hellaswg", "mc:mmlu/anatomyy", "navigate",
         "stdlib:../../etc/passwd", "stdlib:jsonn", "text:/no/such/file.txt", "shakespear:hamlet", "hf:",
         "jsonl:/no/such.jsonl", "text:{empty}", "stdlib:json.decoder[10:5]", "mc:", "bigbench:"]


def invocations(tmp: Path) -> list[list[str]]:
    tmp.mkdir()
    (tmp / "empty.txt").write_text("")
    (tmp / "latin1.txt").write_bytes("caf\xe9 na\xefve".encode("latin-1"))
    (tmp / "a-file").write_text("x")
    (tmp / "not-a-layout").mkdir()
    (tmp / "not-a-layout" / "notes.json").write_text('{"hello": 1}')
    out: list[list[str]] = []
    for task in TASKS:
        task = task.replace("{empty}", str(tmp / "empty.txt"))
        out.append(["eval", "--model", "x", "--task", task])
        out.append(["eval", "--pack", "default", "--task", task, "--limit", "5"])
    for i, line in enumerate(JSONL_LINES):
        path = tmp / f"bad{i}.jsonl"
        path.write_text(line + "\n")
        out.append(["eval", "--model", "x", "--task", f"jsonl:{path}"])
        out.append(["eval", "--model", "x", "--task", f"jsonl:{path}", "--shots", "2"])
    for name, text in BAD_RECIPES.items():
        path = tmp / f"{name}.yaml"
        path.write_text(text.replace("OUT", str(tmp / "never")))
        out.append(["fuse", "validate", str(path)])
        out.append(["fuse", "validate", str(path), "--set", "train.lr=1e-5"])
    out += [["fuse", "validate", str(tmp / "missing.yaml")], ["fuse", "validate", str(tmp / "latin1.txt")]]
    for limit in ("0", "-1", "-100"):
        out.append(["eval", "--model", "x", "--task", "stdlib:json.decoder", "--limit", limit])
    for shots in ("-1", "-5"):
        out.append(["eval", "--model", "x", "--task", "stdlib:json.decoder", "--shots", shots])
    for suite in ("bbh", "dev2", "mainn", ""):
        out.append(["eval", "--model", "x", "--suite", suite])
    out += [
        ["eval", "--model", "x", "--task", "stdlib:json.decoder", "--out", str(tmp / "a-file")],
        ["eval", "--model", "x", "--task", "bbh:navigate", "--data-dir", str(tmp / "not-a-layout")],
        ["eval", "--model", "x", "--task", "bbh:navigate", "--data-dir", str(tmp / "nowhere")],
        ["eval", "--model", "x", "--task", "stdlib:json.decoder", "--resume"],
        ["eval", "--task", "stdlib:json.decoder"],
        ["eval", "--model", "x"],
        ["eval", "--model", NOT_UTF8, "--task", "stdlib:json.decoder"],
        ["eval", "--model", "x", "--task", NOT_UTF8],
        ["generate", NOT_UTF8],
        ["generate", "ok", "--model", NOT_UTF8],
        ["score", "--context", NOT_UTF8, "--continuation", " x"],
        ["score", "--context", "c", "--continuation", NOT_UTF8],
        ["align", "inspect", "smollm2", NOT_UTF8],
        ["zoo", "path", "gema3"], ["zoo", "path", "bigbnch"], ["zoo", "path", "bigbench"],
        ["zoo", "data", "bigbnch"], ["zoo", "data", "olmo"], ["zoo", "fetch", "smolm2"], ["zoo", "fetch", NOT_UTF8],
        ["zoo", "path", NOT_UTF8],
    ]
    return out


def test_a_hundred_bad_command_lines_each_get_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    cases = invocations(tmp_path / "inputs")
    assert len(cases) >= 100
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    failures = []
    for argv in cases:
        code = main(argv)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        if code != 2 or len(lines) != 1 or "error:" not in lines[0] or "Traceback" in err:
            failures.append((argv, code, err[-400:]))
    assert not failures, json.dumps([[str(a) for a in f[0]] + [f[1], f[2]] for f in failures[:5]], indent=1)
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before  # nothing written: no recipe.resolved.yaml, no half results, no output dirs
