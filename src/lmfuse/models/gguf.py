"""GGUF files: what transformers can dequantise, a clear check before it tries, and the load itself.

Used by `lmfuse.models.load` (a member given as a GGUF file) and `lmfuse.models.zoo` (converting the default
pack's GGUFs once into safetensors directories).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmfuse.errors import ModelLoadError, one_line


def gguf_causal_architectures() -> list[str]:
    """GGUF architectures transformers can dequantise into a causal LM (encoder-decoders left out)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer", "t5", "umt5"})


def check_gguf_architecture(path: Path) -> str:
    """The GGUF's ``general.architecture``; a clear error for an unreadable file or an unsupported one.

    Checked before transformers runs, whose own errors for these cases are indirect (a tokenizer or
    config failure).
    """
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(path)).fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
    except Exception as exc:  # gguf raises ValueError, struct/numpy errors, KeyError, ... on bad files
        raise ModelLoadError(
            f"{str(path)!r} is not a readable GGUF file (truncated, or not GGUF): {type(exc).__name__}: {exc}"
        ) from None
    supported = gguf_causal_architectures()
    # transformers maps some spellings (e.g. "qwen2moe") itself; only reject what matches nothing.
    if not any(arch.replace("-", "").replace("_", "") == s.replace("_", "") for s in supported):
        raise ModelLoadError(
            f"GGUF {str(path)!r} has architecture {arch!r}, which transformers cannot load as a causal LM; "
            f"supported: {', '.join(supported)}"
        )
    return arch


def load_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """``(tokenizer, causal LM)`` dequantised from the GGUF file ``path`` (architecture checked first)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch = check_gguf_architecture(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(
            f"could not load GGUF {str(path)!r} (architecture {arch!r}): {one_line(exc)}"
        ) from None
    return tok, model
