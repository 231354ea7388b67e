"""Torch dtypes by the names users give them (``--dtype``, recipes, the zoo's cache dtype)."""

from __future__ import annotations

import torch

from lmfuse.registry import check_choice

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    return DTYPES[check_choice(dtype, list(DTYPES), "dtype")]
