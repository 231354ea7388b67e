"""Pure maths: fusion rules and weighting strategies (no models)."""

from __future__ import annotations

import math

import pytest
import torch

from lmfuse.ensemble.fusion import FUSIONS, fill_holes, mixture, product
from lmfuse.ensemble.weighting import WEIGHTINGS, WeightOptions, WeightProblem, fit_weights
from lmfuse.errors import InputError, NumericalError
from lmfuse.registry import UnknownNameError


def rand_lp(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(*shape, generator=g) * 3, dim=-1)


def problem(k: int = 3, t: int = 12, v: int = 50, seed: int = 0, fusion: str = "product") -> WeightProblem:
    lp = rand_lp(k, t, v, seed=seed)
    targets = torch.randint(0, v, (t,), generator=torch.Generator().manual_seed(seed + 1))
    nll = -lp.gather(-1, targets[None, :, None].expand(k, -1, 1))[..., 0].mean(1)
    return WeightProblem(nll=nll, log_probs=lp, targets=targets, fusion=fusion)


def test_product_is_raw_logit_fusion_and_one_hot_reproduces_member() -> None:
    logits = torch.randn(3, 4, 20)
    w = torch.tensor([0.5, 0.3, 0.2])
    fused_lp = product(torch.log_softmax(logits, -1), w)
    fused_raw = torch.log_softmax((w[:, None, None] * logits).sum(0), -1)
    assert torch.allclose(fused_lp, fused_raw, atol=1e-5)
    lp = torch.log_softmax(logits, -1)
    for rule in FUSIONS.names():
        assert torch.allclose(FUSIONS.get(rule)(lp, torch.tensor([0.0, 1.0, 0.0])), lp[1], atol=1e-6)


def test_zero_weight_member_with_minus_inf_gives_no_nan() -> None:
    lp = rand_lp(2, 5, 10)
    lp[1, :, 3] = -math.inf
    for rule in (product, mixture):
        out = rule(lp, torch.tensor([1.0, 0.0]))
        assert not torch.isnan(out).any()
        assert torch.allclose(out, lp[0], atol=1e-6)


def test_mixture_is_weighted_mean_of_probabilities() -> None:
    lp = rand_lp(2, 3, 7)
    w = torch.tensor([0.25, 0.75])
    expected = (w[:, None, None] * lp.exp()).sum(0).log()
    assert torch.allclose(mixture(lp, w), expected, atol=1e-5)


def test_fill_holes_keeps_ranking_and_removes_minus_inf() -> None:
    lp = torch.tensor([[-1.0, -math.inf, -3.0], [-0.5, -2.0, -math.inf]])
    out = fill_holes(lp)
    assert torch.equal(out, torch.tensor([[-1.0, -3.0, -3.0], [-0.5, -2.0, -2.0]]))


def test_top1_equals_sim_as_tau_goes_to_zero_and_uniform_as_tau_goes_to_infinity() -> None:
    p = WeightProblem(nll=torch.tensor([2.3, 1.7, 2.9, 1.9]))
    top = fit_weights("top1", p)
    assert torch.allclose(fit_weights("packllm-sim", p, WeightOptions(tau=1e-4)), top)
    assert torch.allclose(fit_weights("packllm-sim", p, WeightOptions(tau=1e6)), fit_weights("uniform", p), atol=1e-6)
    sim = fit_weights("packllm-sim", p)  # tau = 1: inverse-perplexity weights
    inv_ppl = torch.exp(-p.nll) / torch.exp(-p.nll).sum()
    assert torch.allclose(sim, inv_ppl, atol=1e-6)


@pytest.mark.parametrize("fusion", ["product", "mixture"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_opt_weights_on_simplex_on_grid_and_fitted_nll_not_worse_than_best_member(fusion: str, seed: int) -> None:
    p = problem(k=4, seed=seed, fusion=fusion)
    w = fit_weights("packllm-opt", p)
    assert bool((w >= 0).all()) and abs(float(w.sum()) - 1) < 1e-6
    # products of grid values: every weight is a multiple of 0.05 to the power of the models visited
    best_member = min(float(p.objective(torch.eye(4)[k])) for k in range(4))
    fitted = float(p.objective(w))
    assert fitted <= best_member + 1e-6


def test_opt_two_members_weights_are_grid_points() -> None:
    p = problem(k=2, seed=5)
    w = fit_weights("packllm-opt", p)
    assert abs(float(w[0]) * 20 - round(float(w[0]) * 20)) < 1e-5


def test_opt_exact_tie_keeps_the_smaller_a_favouring_the_newer_model() -> None:
    lp = rand_lp(1, 6, 9).expand(2, -1, -1).clone()  # identical members: every a ties exactly
    targets = torch.arange(6)
    p = WeightProblem(nll=torch.tensor([1.0, 2.0]), log_probs=lp, targets=targets)
    w = fit_weights("packllm-opt", p)
    assert w.tolist() == [0.0, 1.0]  # a = 0 is the first of the tied grid points


def test_fixed_weights_are_normalised_and_validated() -> None:
    p = WeightProblem(nll=torch.zeros(3))
    assert fit_weights("fixed", p, WeightOptions(fixed=[1, 1, 2])).tolist() == [0.25, 0.25, 0.5]
    with pytest.raises(InputError, match="one weight per member"):
        fit_weights("fixed", p, WeightOptions(fixed=[1, 2]))
    with pytest.raises(InputError, match=">= 0"):
        fit_weights("fixed", p, WeightOptions(fixed=[1, -1, 2]))


def test_unknown_weighting_suggests_close_names() -> None:
    with pytest.raises(UnknownNameError, match="packllm-opt"):
        WEIGHTINGS.get("packlm-opt")


def test_objective_abstaining_members_are_renormalised_away() -> None:
    p = problem(k=2, t=4, seed=7)
    present = torch.tensor([[True] * 4, [False] * 4])
    q = WeightProblem(nll=p.nll, log_probs=p.log_probs, targets=p.targets, present=present)
    # member 1 never present: any weights give member 0's NLL
    assert abs(float(q.objective(torch.tensor([0.2, 0.8]))) - float(p.objective(torch.tensor([1.0, 0.0])))) < 1e-6


def test_objective_rejects_non_finite_weights_instead_of_scoring_the_fallback() -> None:
    p = problem(k=3, t=4, seed=3)
    with pytest.raises(NumericalError, match="not finite"):
        p.objective(torch.tensor([float("nan"), 0.5, 0.5]))
