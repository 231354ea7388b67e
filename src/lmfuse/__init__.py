"""lmfuse: fuse language models with different tokenizers, at test time (PackLLM) and by training (FuseLLM).

The public API is imported lazily, so ``import lmfuse`` (and the CLI's start-up) does not pay for
torch and transformers until something is used::

    from lmfuse import Pack, load_member
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Pack": "lmfuse.ensemble.pack",
    "PackConfig": "lmfuse.ensemble.config",
    "WeightReport": "lmfuse.ensemble.weighting",
    "pack_scorer": "lmfuse.eval.pack_scorer",
    "Member": "lmfuse.models.member",
    "load_member": "lmfuse.models.load",
    "build_vocab_map": "lmfuse.alignment",
    "align_offsets": "lmfuse.alignment",
    "evaluate": "lmfuse.eval.runner",
    "LmfuseError": "lmfuse.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lmfuse' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
