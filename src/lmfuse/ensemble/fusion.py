"""Fusion rules: how K members' next-token log-distributions combine into one. Pure tensor maths.

Shapes: ``log_probs`` is ``[K, ..., V]`` (float32 log-probabilities, all in the seed's vocabulary),
``weights`` is ``[K]`` or ``[K, ...]`` (broadcast over the leading dims of ``log_probs[k]``) and lies on
the simplex. The result is ``[..., V]``, normalised.

* ``product`` — PackLLM's rule (Mavromatis et al. 2024, arXiv 2404.11531, §3):
  ``log_softmax(sum_k w_k log p_k)``, a weighted geometric mean (product of experts).
* ``mixture`` — ``log sum_k w_k p_k``, a weighted arithmetic mean; its NLL is convex in ``w``.

A member with weight 0 is left out entirely, so ``0 * -inf`` never turns into NaN and one-hot weights
reproduce that member bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lmfuse.registry import Registry

FusionRule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
FUSIONS: Registry[FusionRule] = Registry("fusion rule")


def _expand(weights: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """``[K]`` or ``[K, ...]`` weights -> ``[K, ..., 1]`` to broadcast against ``[K, ..., V]``."""
    w = weights.to(log_probs.dtype)
    while w.dim() < log_probs.dim():
        w = w.unsqueeze(-1)
    return w


@FUSIONS.register("product")
def product(log_probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``log_softmax(sum_k w_k log p_k)`` over the last axis (PackLLM, arXiv 2404.11531)."""
    w = _expand(weights, log_probs)
    # Zero-weight members are dropped before multiplying: 0 * -inf would be NaN, in the value and (were
    # the product formed first) in the gradient with respect to the weights.
    terms = w * torch.where(w > 0, log_probs, torch.zeros((), dtype=log_probs.dtype))
    return torch.log_softmax(terms.sum(0), dim=-1)


@FUSIONS.register("mixture")
def mixture(log_probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``log sum_k w_k p_k`` over members (a weighted arithmetic mean of the distributions)."""
    w = _expand(weights, log_probs)
    log_w = torch.where(w > 0, w.clamp_min(1e-45).log(), torch.full((), -math.inf, dtype=log_probs.dtype))
    terms = torch.where(w > 0, log_w + log_probs, torch.full((), -math.inf, dtype=log_probs.dtype))
    out = torch.logsumexp(terms, dim=0)
    # Renormalise: projected members may have lost a little mass to unmapped tokens.
    return out - torch.logsumexp(out, dim=-1, keepdim=True)


def fill_holes(log_probs: torch.Tensor) -> torch.Tensor:
    """Give every ``-inf`` entry of each row the row's smallest finite value.

    A member projected into the seed's vocabulary leaves ``-inf`` on seed tokens it cannot express;
    under the product rule that would be a veto on them. Filling with "as unlikely as its least likely
    token" keeps the member's ranking intact (one-hot weights still pick its argmax) without vetoes.
    """
    finite = torch.isfinite(log_probs)
    if bool(finite.all()):
        return log_probs
    floor = torch.where(finite, log_probs, torch.full((), math.inf)).amin(-1, keepdim=True)
    floor = torch.where(torch.isfinite(floor), floor, torch.zeros_like(floor))
    return torch.where(finite, log_probs, floor)
