"""load_member on good and bad input: each bad input gets one clear ModelLoadError naming the value."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gguf_fixtures import write_gguf_of_architecture, write_tiny_llama_gguf

from lmfuse.cli.main import main
from lmfuse.errors import ModelLoadError
from lmfuse.models.gguf import gguf_causal_architectures
from lmfuse.models.load import load_member
from lmfuse.models.member import Member
from lmfuse.registry import UnknownNameError


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


def test_gguf_file_loads_as_a_member(tiny_gguf: Path) -> None:
    member = load_member(tiny_gguf)
    assert isinstance(member, Member) and member.name == "tiny-llama" and member.source == f"gguf:{tiny_gguf}"
    assert member.logits_width == 300 and member.tokenizer.is_fast
    ids = member.encode("Hello world").ids
    (lp,) = member.log_probs([ids])
    assert lp.shape == (len(ids), 300) and lp.dtype == torch.float32
    assert torch.allclose(lp.exp().sum(-1), torch.ones(len(ids)), atol=1e-4)


def test_directory_with_one_gguf_loads_it(tiny_gguf: Path) -> None:
    assert load_member(tiny_gguf.parent, name="t").name == "t"


def test_unknown_path_or_id_names_it_and_suggests_zoo_names() -> None:
    with pytest.raises(ModelLoadError, match=r"unknown model 'smolm2'.*Did you mean 'smollm2'"):
        load_member("smolm2")
    with pytest.raises(ModelLoadError, match=r"unknown model '/no/such/model\.gguf'.*not a file"):
        load_member("/no/such/model.gguf")


def test_hub_id_offline_and_not_cached_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match=r"hub model 'nobody-xyz/no-such-model' \(offline"):
        load_member("nobody-xyz/no-such-model")


def test_non_gguf_file_is_refused(tmp_path: Path) -> None:
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match=r"model\.bin' is not a \.gguf file"):
        load_member(weights)


def test_directory_without_model_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"holds no config\.json and 0 \.gguf files"):
        load_member(tmp_path)


def test_hf_directory_without_weights_is_a_load_error(tiny_gguf: Path, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelLoadError, match="could not load model"):
        load_member(tmp_path)


@pytest.mark.parametrize("arch", ["bert", "madeup"])
def test_gguf_of_unsupported_architecture_names_it(tmp_path: Path, arch: str) -> None:
    path = write_gguf_of_architecture(tmp_path / f"{arch}.gguf", arch)
    with pytest.raises(ModelLoadError, match=rf"architecture '{arch}', which transformers cannot load.*llama"):
        load_member(path)


def test_truncated_gguf_is_not_readable(tiny_gguf: Path, tmp_path: Path) -> None:
    broken = tmp_path / "half.gguf"
    broken.write_bytes(tiny_gguf.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="not a readable GGUF file"):
        load_member(broken)


def test_supported_architectures_cover_the_default_pack() -> None:
    archs = gguf_causal_architectures()
    assert {"llama", "gemma3", "qwen2"} <= set(archs) and "t5" not in archs


def test_unknown_dtype_lists_valid_ones(tiny_gguf: Path) -> None:
    with pytest.raises(UnknownNameError, match=r"unknown dtype 'float8'\. Did you mean .*'float16'.*Valid: bfloat16, float16, float32"):
        load_member(tiny_gguf, dtype="float8")


def test_zoo_member_not_installed_or_half_written(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelLoadError, match=r"'smollm2' is not installed yet; run `lmfuse zoo fetch smollm2`"):
        load_member("smollm2")
    from lmfuse.models import zoo

    half = zoo.zoo_dir("smollm2")
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # no completion marker: an interrupted conversion
    with pytest.raises(ModelLoadError, match=r"'smollm2' is incomplete \(an interrupted fetch\)"):
        load_member("smollm2")


def test_cli_reports_a_bad_model_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # `lmfuse zoo path` exercises the same error path as every command that loads a member.
    assert main(["zoo", "path", "smollm2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'smollm2' is not installed" in err and "lmfuse zoo fetch smollm2" in err
