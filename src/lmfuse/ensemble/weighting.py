"""Weighting strategies: per prompt, how much each member is trusted. Pure functions of a `WeightProblem`.

Every strategy is ``(problem, options) -> weights [K]`` on the simplex, registered in ``WEIGHTINGS``:

* ``uniform``      — 1/K each: the "uniform ensemble" baseline (PackLLM §3.4, arXiv 2404.11531).
* ``fixed``        — the user's weights, normalised.
* ``top1``         — all weight on the lowest-NLL member ("Top1-PPL", PackLLM baseline).
* ``packllm-sim``  — ``softmax(-NLL / tau)`` (PackLLM-sim; tau = 1 gives inverse-perplexity weights).
* ``packllm-opt``  — PackLLM-opt: models sorted by NLL, a greedy 21-point grid per added model minimising
  the fused NLL of the prompt, strict ``<`` so exact ties keep the smaller ``a`` (the newer model), no
  early stop (reference code ``cmavro/PackLLM`` @479e77d, ``modeling_llm_fusion.py``).
* ``online``       — beyond the paper: packllm-opt's weights on the prompt are where a text *starts*; scoring
  and decoding then update them after every byte (`follow`: exponentiated gradient on the fused log-loss
  with a fixed share, step ``online_rate`` per byte), so a member that becomes better later gains weight.
* ``demo-fit``, ``demo-fit-task`` — beyond the paper: packllm-opt's grid on the fused NLL of labelled
  demonstrations' answers (per prompt; pooled per task).
* ``choice-fit-task`` — beyond the paper: packllm-opt's grid on a `ChoiceProblem`: the log-loss of choosing
  the correct option among each pooled demonstration's options (discriminative, not generative).

The objective (``WeightProblem.objective``) is the mean NLL of the prompt's bytes under the fused
next-byte distribution, every member read as its exact byte-level model (`lmfuse.ensemble.bytelevel`); a
member that cannot read a byte (a lossy tokenizer) abstains there and the weights are renormalised over the
members present.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lmfuse.ensemble.fusion import FUSIONS
from lmfuse.errors import InputError, NumericalError
from lmfuse.registry import Registry


@dataclass
class WeightProblem:
    """What a strategy may look at for one prompt.

    ``nll``: ``[K]`` each member's normalised NLL of the prompt in its own tokenization.
    ``log_probs``: ``[K, T, S]`` float32 member log-probs at the T fitted positions over S outcomes (the
    pack: the 256 next bytes).
    ``targets``: ``[T]`` index (into the S axis) of the outcome that actually follows.
    ``present``: ``[K, T]`` bool, whether member k contributes at position t.
    """

    nll: torch.Tensor
    log_probs: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    present: torch.Tensor | None = None
    fusion: str = "product"

    @property
    def k(self) -> int:
        return int(self.nll.shape[0])

    def objective(self, weights: torch.Tensor) -> torch.Tensor:
        """Mean fused NLL per position (per byte, for a pack) for ``weights [K]`` (differentiable)."""
        if self.log_probs is None or self.targets is None:
            raise InputError("this weighting needs per-position log-probs (the fused-NLL objective); none given")
        if not bool(torch.isfinite(weights).all()):
            # NaN weights would fail `total > 0` below and be scored as the equal-weight fallback.
            raise NumericalError(f"fused-NLL objective: weights {weights.tolist()} are not finite")
        present = self.present if self.present is not None else torch.ones(self.log_probs.shape[:2], dtype=torch.bool)
        out = fused(self.log_probs, weights, present, self.fusion)  # [T, S]
        return -out.gather(-1, self.targets[:, None])[:, 0].mean()


@dataclass(kw_only=True)
class ChoiceProblem(WeightProblem):
    """Multiple choice as a weight problem: the positions are the bytes of every option of Q labelled
    questions (each option read after its question), and the objective is the log-loss of choosing a correct
    option, not the NLL of the bytes.

    ``option_of``: ``[T]`` the option (0..O-1) each position belongs to. ``question_of``: ``[O]`` the
    question (0..Q-1) of each option. ``correct``: ``[O]`` bool, a correct option. ``option_bytes``: ``[O]``
    each option's UTF-8 length. ``nll``: ``[K]`` each member's own objective (one-hot weights), which orders
    packllm-opt's grid.
    """

    option_of: torch.Tensor
    question_of: torch.Tensor
    correct: torch.Tensor
    option_bytes: torch.Tensor

    def objective(self, weights: torch.Tensor) -> torch.Tensor:
        """Mean over questions and over the two scorings evaluation reports (an option's summed log-prob,
        ``acc``; per byte, ``acc_norm``) of ``-log softmax`` (over the question's options) of its correct ones."""
        if self.log_probs is None or self.targets is None or self.present is None:
            raise InputError("choice-fit needs the options' per-byte log-probs; none given")
        per_byte = fused(self.log_probs, weights, self.present, self.fusion).gather(-1, self.targets[:, None])[:, 0]
        option = torch.zeros(len(self.option_bytes), dtype=per_byte.dtype).index_add(0, self.option_of, per_byte)
        losses = [choice_loss(scores, self.question_of, self.correct)
                  for scores in (option, option / self.option_bytes.clamp_min(1))]
        return torch.stack(losses).mean()


def choice_loss(scores: torch.Tensor, question_of: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """``-mean_q log P(a correct option of q)`` under a softmax of ``scores [O]`` over each question's options."""
    questions = int(question_of.max()) + 1
    # Per question log-sum-exp of all its options and of its correct ones (segments of ``scores``).
    shift = torch.full((questions,), -math.inf, dtype=scores.dtype).scatter_reduce(0, question_of, scores, "amax")
    exp = (scores - shift[question_of]).exp()
    total = torch.zeros(questions, dtype=scores.dtype).index_add(0, question_of, exp)
    right = torch.zeros(questions, dtype=scores.dtype).index_add(0, question_of, exp * correct)
    return -(right.log() - total.log()).mean()


def renormalised(weights: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``[K]`` (or per position ``[K, T]``) weights -> ``[K, T]``: renormalised over the members present at
    each position; where every present member has weight 0, equal weights over them."""
    w = (weights[:, None] if weights.dim() == 1 else weights) * present
    total = w.sum(0, keepdim=True)
    fallback = present / present.sum(0, keepdim=True).clamp_min(1)
    return torch.where(total > 0, w / total.clamp_min(1e-30), fallback)


def fused(log_probs: torch.Tensor, weights: torch.Tensor, present: torch.Tensor, fusion: str) -> torch.Tensor:
    """``[T, S]`` the fused log-distribution at each of T positions, from ``log_probs [K, T, S]``: the one
    rule the weight fit, scoring and decoding share. The weights (``[K]``, or ``[K, T]`` when they follow the
    text) are `renormalised` over the members present at a position (``present [K, T]``); where no member is
    present, every outcome is equally likely."""
    out = FUSIONS.get(fusion)(log_probs, renormalised(weights, present))
    anyone = present.any(0)[:, None]
    return torch.where(anyone, out, torch.full((), -math.log(log_probs.shape[-1]), dtype=out.dtype))


ONLINE = "online"
LOG_IMPOSSIBLE = -1e4  # stands for -inf (a token a member cannot write) in the online update's gradient
MAX_GRADIENT = 50.0  # one surprising byte moves the weights at most exp(rate * 50)
FITS_ON_OBJECTIVE = ("packllm-opt", ONLINE)  # strategies that minimise the fused NLL of the prompt
DEMO_FIT = "demo-fit"  # fitted per example, on the answers of the demonstrations in its prompt
DEMO_FIT_TASK = "demo-fit-task"  # fitted once per task, on the answers of the task's demonstrations pooled
CHOICE_FIT_TASK = "choice-fit-task"  # fitted once per task, on choosing the pooled demonstrations' answers
FITTED_PER_TASK = (DEMO_FIT_TASK, CHOICE_FIT_TASK)  # one set of weights per task (`PackScorer.learn`)
FITS_ON_DEMONSTRATIONS = (DEMO_FIT, *FITTED_PER_TASK)  # strategies fitted on labelled demonstrations
# The online update's step per byte, chosen on development texts (benchmarks/online.py,
# docs/results/pack/online/README.md).
DEFAULT_ONLINE_RATE = 0.03


@dataclass(frozen=True)
class WeightOptions:
    tau: float = 1.0
    online_rate: float = DEFAULT_ONLINE_RATE  # ``online``: the weights' step size per byte (`updated`)
    fixed: Sequence[float] | None = None
    grid: int = 21  # PackLLM-opt's grid: a in {0, 1/20, ..., 1}
    extra: dict[str, float] = field(default_factory=dict)


Weighting = Callable[[WeightProblem, WeightOptions], torch.Tensor]
WEIGHTINGS: Registry[Weighting] = Registry("weighting")


@WEIGHTINGS.register("uniform")
def uniform(problem: WeightProblem, options: WeightOptions) -> torch.Tensor:
    return torch.full((problem.k,), 1.0 / problem.k)


@WEIGHTINGS.register("fixed")
def fixed(problem: WeightProblem, options: WeightOptions) -> torch.Tensor:
    if options.fixed is None or len(options.fixed) != problem.k:
        got = "none" if options.fixed is None else f"{len(options.fixed)} values"
        raise InputError(f"weighting 'fixed' needs one weight per member ({problem.k}); got {got}")
    w = torch.tensor([float(x) for x in options.fixed])
    if bool((w < 0).any()) or float(w.sum()) <= 0:
        raise InputError(f"fixed weights must be >= 0 with a positive sum; got {list(options.fixed)}")
    return w / w.sum()


@WEIGHTINGS.register("top1")
def top1(problem: WeightProblem, options: WeightOptions) -> torch.Tensor:
    w = torch.zeros(problem.k)
    w[int(torch.argmin(problem.nll))] = 1.0  # argmin: the first member wins an exact tie
    return w


@WEIGHTINGS.register("packllm-sim")
def packllm_sim(problem: WeightProblem, options: WeightOptions) -> torch.Tensor:
    if options.tau <= 0:
        raise InputError(f"packllm-sim temperature tau must be > 0; got {options.tau}")
    return torch.softmax(-problem.nll.double() / options.tau, dim=0).float()


@WEIGHTINGS.register("packllm-opt")
def packllm_opt(problem: WeightProblem, options: WeightOptions) -> torch.Tensor:
    """The paper's greedy grid; weights are products of grid values, so they stay on the simplex."""
    order = torch.argsort(problem.nll, stable=True).tolist()  # best (lowest NLL) first
    w = torch.zeros(problem.k, dtype=torch.float64)
    w[order[0]] = 1.0
    steps = options.grid - 1
    with torch.no_grad():
        for nxt in order[1:]:
            best_loss, best_a = float("inf"), 1.0
            for g in range(options.grid):
                a = g / steps
                cand = a * w
                cand[nxt] += 1.0 - a
                loss = float(problem.objective(cand.float()))
                if loss < best_loss:  # strict: an exact tie keeps the smaller a (favours the new model)
                    best_loss, best_a = loss, a
            w = best_a * w
            w[nxt] += 1.0 - best_a
    return w.float()


@WEIGHTINGS.register(DEMO_FIT)
@WEIGHTINGS.register(DEMO_FIT_TASK)
@WEIGHTINGS.register(CHOICE_FIT_TASK)
def demo_fit(problem: WeightProblem, options: WeightOptions) -> torch.Tensor:
    """Beyond the paper: packllm-opt's grid on a problem built from labelled demonstrations by
    `lmfuse.eval.pack_scorer.PackScorer` (`lmfuse.ensemble.pack.Pack.fit` refuses these without one):
    the bytes of their answers (``demo-fit``, ``demo-fit-task``) or choosing their answers among their
    options (``choice-fit-task``, a `ChoiceProblem`)."""
    return packllm_opt(problem, options)


@WEIGHTINGS.register(ONLINE)
def online(problem: WeightProblem, options: WeightOptions) -> torch.Tensor:
    """Beyond the paper: the weights a text starts from (packllm-opt's on the prompt); scoring and decoding
    then update them after every byte (`follow`)."""
    return packllm_opt(problem, options)


def follow(start: torch.Tensor, log_probs: torch.Tensor, targets: torch.Tensor, present: torch.Tensor,
           rate: float, fusion: str) -> torch.Tensor:
    """``[K, T]`` the weights at each of T positions when they follow the text. Position 0 uses ``start [K]``;
    after each byte the weights are `updated` by how the fused distribution predicted it (``log_probs
    [K, T, S]`` at ``targets [T]``), so a member that becomes better later in the text gains weight. Causal:
    the weights at ``t`` depend on the bytes before ``t`` only."""
    check_rate(rate)
    k, t = present.shape
    lp, here, seen = log_probs.double().numpy(), present.numpy(), targets.numpy()
    out = np.empty((k, t))
    w = start.double().numpy()
    for i in range(t):
        out[:, i] = w
        w = updated(w, lp[:, i], int(seen[i]), here[:, i], rate, fusion)
    return torch.from_numpy(out).float()


def updated(weights: np.ndarray, log_probs: np.ndarray, target: int, present: np.ndarray, rate: float,
            fusion: str) -> np.ndarray:
    """``[K]`` weights after one observed outcome ``target`` of ``log_probs [K, S]``: one exponentiated-gradient
    step of size ``rate`` on the fused log-loss of it (``w_k <- w_k exp(-rate * d loss / d w_k)``,
    renormalised), then a fixed share of ``rate / 100`` handed back equally, so no member's weight stays 0.

    Exponentiated gradient, not a Bayesian posterior (``w_k p_k(x)``): the posterior is the exact update of a
    *mixture* but drives a product of experts toward its single best member; on the development texts it
    scored worse than packllm-opt's fixed weights at every rate tried (docs/results/pack/online/README.md).
    Members absent at the position (``present [K]`` False) are left out of the step."""
    w = weights.copy()
    if present.any():
        lp = np.where(np.isfinite(log_probs), log_probs, LOG_IMPOSSIBLE)[present]
        share = w[present] / w[present].sum() if w[present].sum() > 0 else np.full(int(present.sum()), 1 / present.sum())
        if fusion == "product":  # loss = -log softmax(sum_k w_k l_k)[x]: gradient -(l_k[x] - E_fused[l_k])
            z = share @ lp
            f = np.exp(z - z.max())
            f /= f.sum()
            grad = -(lp[:, target] - lp @ f)
        else:  # mixture: loss = -log sum_k w_k p_k(x): gradient -p_k(x) / fused(x)
            p = np.exp(lp[:, target])
            grad = -p / max(float(share @ p), 1e-300)
        step = np.zeros(len(w))
        step[present] = np.clip(grad, -MAX_GRADIENT, MAX_GRADIENT)
        w = w * np.exp(-rate * step)
        w /= w.sum()
    share_back = rate / 100
    return (1 - share_back) * w + share_back / len(w)


def check_rate(rate: float) -> None:
    if not 0 < rate < 1:
        raise InputError(f"online rate must be in (0, 1) (the weights' step size per byte); got {rate}")


def fit_weights(name: str, problem: WeightProblem, options: WeightOptions | None = None) -> torch.Tensor:
    """Look up a strategy by name and run it; checks the result is a finite point of the simplex."""
    w = WEIGHTINGS.get(name)(problem, options or WeightOptions())
    if w.shape != (problem.k,) or not bool(torch.isfinite(w).all()) or abs(float(w.sum()) - 1.0) > 1e-4:
        raise InputError(f"weighting {name!r} returned weights off the simplex: {w.tolist()}")
    return w


@dataclass
class WeightReport:
    """Each member's weight and prompt NLL for one prompt, and the seed: the member whose tokens decoding
    emits (the largest weight, ties by the lowest NLL, unless fixed)."""

    members: list[str]
    weights: list[float]
    nll: list[float]  # normalised as ``nll_norm`` says
    nll_norm: str
    seed: str
    weighting: str
    fusion: str
    fitted_nll: float | None = None  # fused NLL per byte of the fitted prompt bytes
    fit_seconds: float = 0.0
    forward_seconds: float = 0.0
    truncated: dict[str, int] = field(default_factory=dict)  # member -> prompt tokens dropped (context too short)

    def as_dict(self) -> dict[str, Any]:
        return {"members": [{"name": n, "weight": w, "nll": x} for n, w, x in
                            zip(self.members, self.weights, self.nll, strict=True)],
                "nll_norm": self.nll_norm, "seed": self.seed, "weighting": self.weighting,
                "fusion": self.fusion, "fitted_nll": self.fitted_nll, "truncated": dict(self.truncated)}

    def __str__(self) -> str:
        unit = "nats/token" if self.nll_norm == "token" else "nats/byte"
        lines = [f"weighting {self.weighting} ({self.fusion} fusion); decoding emits {self.seed}'s tokens "
                 f"(the seed: largest weight, ties by lowest NLL, unless fixed); NLL in {unit} of each member's "
                 "own tokenization"]
        width = max(len(n) for n in self.members)
        for n, w, x in zip(self.members, self.weights, self.nll, strict=True):
            mark = "  <- seed" if n == self.seed else ""
            lines.append(f"  {n:<{width}}  weight {w:6.3f}  NLL {x:7.4f}{mark}")
        if self.fitted_nll is not None:
            lines.append(f"  fused NLL on the prompt: {self.fitted_nll:.4f} nats/byte")
        if self.weighting == ONLINE:
            lines.append("  these are the starting weights: they follow the text after every token (online)")
        for member, dropped in self.truncated.items():
            lines.append(f"  warning: {member} read only the end of the prompt ({dropped} earlier tokens did not fit)")
        return "\n".join(lines)
