"""`Pack`: K members fused at test time (PackLLM). Weights per prompt, fused scoring, fused generation.

Per prompt:
1. every member reads the prompt in its own tokenization (one forward pass each);
2. the **seed** member is the one with the lowest normalised NLL on the prompt (or the user's choice); the
   fused distribution lives in its vocabulary;
3. the other members' rows are projected into the seed's vocabulary with the alignment engine (a mined
   vocabulary map, log-sum-exp scatter), at the seed positions where they have a token boundary
   (`lmfuse.ensemble.align`);
4. the weighting strategy fits ``lambda`` on the prompt (``WEIGHTINGS``), and the fusion rule (``FUSIONS``)
   combines the rows.

NLL normalisation (``nll_norm``) is what makes members comparable when choosing the seed and for the
NLL-based strategies: ``"token"`` (mean NLL per token of the member's own tokenization, the paper's) or
``"byte"`` (total NLL per UTF-8 byte of the prompt, the same denominator for every member; the default,
by measurement: see ``DEFAULT_NLL_NORM``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lmfuse.ensemble.align import boundary_index
from lmfuse.ensemble.fusion import FUSIONS, fill_holes
from lmfuse.ensemble.runs import TextRun, read_text, read_with_continuations
from lmfuse.ensemble.support import Preimages, restricted_problem
from lmfuse.ensemble.weighting import WEIGHTINGS, WeightOptions, WeightProblem, fit_weights
from lmfuse.errors import InputError
from lmfuse.eval.member_scorer import HORIZONTAL_SPACE
from lmfuse.models.member import Member

NLL_NORMS = ("token", "byte")
# Per byte, not the paper's per token: on the default pack packllm-opt was better with it on 4 of 6 text
# chunks (equal on 2) and on the 8-task development suite (acc_norm +0.015 [+0.006, +0.025], paired over
# 679 examples); docs/results/pack/README.md, "NLL per token or per byte".
DEFAULT_NLL_NORM = "byte"
DEFAULT_WEIGHTING = "packllm-opt"
SUPPORT_POOL = 4  # a member's support_k seed tokens are picked among the images of its 4*support_k best ids


@dataclass
class WeightReport:
    """Each member's weight and prompt NLL for one prompt, and which member was the seed."""

    members: list[str]
    weights: list[float]
    nll: list[float]  # normalised as ``nll_norm`` says
    nll_norm: str
    seed: str
    weighting: str
    fusion: str
    fitted_nll: float | None = None  # fused NLL per seed token of the fitted prompt positions
    fit_seconds: float = 0.0
    forward_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"members": [{"name": n, "weight": w, "nll": x} for n, w, x in
                            zip(self.members, self.weights, self.nll, strict=True)],
                "nll_norm": self.nll_norm, "seed": self.seed, "weighting": self.weighting,
                "fusion": self.fusion, "fitted_nll": self.fitted_nll}

    def __str__(self) -> str:
        unit = "nats/token" if self.nll_norm == "token" else "nats/byte"
        lines = [f"weighting {self.weighting} ({self.fusion} fusion); seed vocabulary: {self.seed} "
                 f"(lowest NLL unless fixed); NLL in {unit} of each member's own tokenization"]
        width = max(len(n) for n in self.members)
        for n, w, x in zip(self.members, self.weights, self.nll, strict=True):
            mark = "  <- seed" if n == self.seed else ""
            lines.append(f"  {n:<{width}}  weight {w:6.3f}  NLL {x:7.4f}{mark}")
        if self.fitted_nll is not None:
            lines.append(f"  fused NLL on the prompt: {self.fitted_nll:.4f} nats/seed-token")
        return "\n".join(lines)


@dataclass
class Analysis:
    """Everything one prompt's forward passes give: runs per member, NLLs, seed, and the fit inputs."""

    text: str
    runs: list[TextRun]
    nll: torch.Tensor  # [K] normalised
    seed: int
    present: torch.Tensor  # [K, T_seed] bool
    index: list[list[int]]  # [K][T_seed] member token index per seed token (-1 absent)
    forward_seconds: float
    caches: list[Any] = field(default_factory=list)


class Pack:
    """A pack of members fused at test time. Build with `Pack.load`."""

    def __init__(self, members: Sequence[Member], weighting: str = DEFAULT_WEIGHTING, fusion: str = "product",
                 seed_member: str | None = None, nll_norm: str = DEFAULT_NLL_NORM, seed: int = 0,
                 options: WeightOptions | None = None, fit_tokens: int = 256, support_k: int | None = 64,
                 healing: bool = True) -> None:
        if not members:
            raise InputError("a pack needs at least one member")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise InputError(f"member names must be unique; got {names}")
        WEIGHTINGS.get(weighting)
        FUSIONS.get(fusion)
        if nll_norm not in NLL_NORMS:
            raise InputError(f"unknown nll_norm {nll_norm!r}; valid: {', '.join(NLL_NORMS)}")
        if seed_member is not None and seed_member not in names:
            raise InputError(f"seed member {seed_member!r} is not in the pack; members: {', '.join(names)}")
        self.members = list(members)
        self.weighting, self.fusion, self.nll_norm = weighting, fusion, nll_norm
        self.seed_member, self.seed = seed_member, seed
        self.options = options or WeightOptions()
        self.fit_tokens, self.support_k, self.healing = fit_tokens, support_k, healing
        self._maps: dict[tuple[int, int], Any] = {}
        self._same: dict[tuple[int, int], bool] = {}
        self._tables: dict[int, Any] = {}
        self._surfaces: dict[int, Any] = {}
        self._pre: dict[tuple[int, int], Preimages] = {}

    @classmethod
    def load(cls, members: Sequence[str | Member] = (), weighting: str = DEFAULT_WEIGHTING,
             fusion: str = "product", seed_member: str | None = None, nll_norm: str = DEFAULT_NLL_NORM, seed: int = 0,
             dtype: str = "float32", **kwargs: Any) -> Pack:
        """Load members (zoo names, paths, hub ids or `Member`s); the default pack when none are given."""
        from lmfuse.models.load import load_member

        if not members:
            from lmfuse.models import zoo

            members = list(zoo.ZOO)
            if not members:
                raise InputError("no members given and the default pack is empty")
        loaded = [m if isinstance(m, Member) else load_member(m, dtype=dtype) for m in members]
        return cls(loaded, weighting=weighting, fusion=fusion, seed_member=seed_member, nll_norm=nll_norm,
                   seed=seed, **kwargs)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    # ---- vocabulary projection -------------------------------------------------------------------------
    def same_tokenizer(self, k: int, s: int) -> bool:
        """Members with identical vocabularies share token ids (no projection, same token stream)."""
        if k == s:
            return True
        key = (min(k, s), max(k, s))
        if key not in self._same:
            a, b = self.members[k].tokenizer, self.members[s].tokenizer
            self._same[key] = a.get_vocab() == b.get_vocab() and type(a.backend_tokenizer.model) is type(
                b.backend_tokenizer.model)
        return self._same[key]

    def vocab_map(self, k: int, s: int) -> Any:
        """Member k -> seed s map: longest seed prefix (``lmfuse.alignment.prefix_map``), cached on disk."""
        if (k, s) not in self._maps:
            from lmfuse.alignment import build_vocab_map

            self._maps[(k, s)] = build_vocab_map(self._table(k), self._table(s), method="prefix",
                                                 src_width=self.members[k].logits_width,
                                                 tgt_width=self.members[s].logits_width)
        return self._maps[(k, s)]

    def surface_index(self, k: int) -> Any:
        """Member k's tokens by surface (exact, longest-prefix and extension lookups; token healing)."""
        if k not in self._surfaces:
            from lmfuse.alignment import surface_index

            self._surfaces[k] = surface_index(self._table(k), self.members[k].logits_width)
        return self._surfaces[k]

    def _table(self, k: int) -> Any:
        if k not in self._tables:
            from lmfuse.alignment import token_table

            self._tables[k] = token_table(self.members[k].tokenizer)
        return self._tables[k]

    def project(self, k: int, s: int, rows: torch.Tensor) -> torch.Tensor:
        """Member k's rows ``[..., V_k]`` in the seed's vocabulary ``[..., V_s]``."""
        seed_width = self.members[s].logits_width
        if self.same_tokenizer(k, s):
            out = rows[..., :seed_width]
            if out.shape[-1] < seed_width:
                pad = torch.full((*out.shape[:-1], seed_width - out.shape[-1]), float("-inf"))
                out = torch.cat([out, pad], dim=-1)
            return fill_holes(out) if self.fusion == "product" else out
        lead = rows.shape[:-1]
        flat = self.preimages(k, s).project(rows.reshape(-1, rows.shape[-1]), fill=self.fusion == "product")
        return flat.reshape(*lead, seed_width)

    # ---- prompt analysis and weights -------------------------------------------------------------------
    def normalised_nll(self, run: TextRun, text: str) -> float:
        total = -float(run.token_logprobs.sum())
        if self.nll_norm == "token":
            return total / len(run.ids)
        covered = text[run.offsets[0][0]:] if run.offsets else text
        return total / max(len(covered.encode("utf-8")), 1)

    def choose_seed(self, nll: torch.Tensor) -> int:
        if self.seed_member is not None:
            return self.names.index(self.seed_member)
        return int(torch.argmin(nll))

    def analyse(self, text: str, runs: Sequence[TextRun] | None = None) -> Analysis:
        """Read ``text`` with every member (unless ``runs`` are given) and line positions up with the seed."""
        if not text:
            raise InputError("cannot weigh members on an empty prompt")
        t0 = time.perf_counter()
        runs = list(runs) if runs is not None else [read_text(m, text) for m in self.members]
        forward = time.perf_counter() - t0
        nll = torch.tensor([self.normalised_nll(r, text) for r in runs])
        s = self.choose_seed(nll)
        index = [boundary_index(text, runs[s].offsets, r.offsets) for r in runs]
        index[s] = list(range(len(runs[s].ids)))
        present = torch.tensor([[i >= 0 for i in idx] for idx in index], dtype=torch.bool)
        return Analysis(text, runs, nll, s, present, index, forward)

    def preimages(self, k: int, s: int) -> Preimages:
        """Member k -> seed s vocabulary map inverted (CSR), for the weight fit's support."""
        if (k, s) not in self._pre:
            width, seed_width = self.members[k].logits_width, self.members[s].logits_width
            if self.same_tokenizer(k, s):
                self._pre[(k, s)] = Preimages.of(np.arange(width), seed_width, np.ones(width, dtype=bool))
            else:
                vmap = self.vocab_map(k, s)
                self._pre[(k, s)] = Preimages.of(vmap.index, seed_width, vmap.exact)
        return self._pre[(k, s)]

    def problem(self, a: Analysis) -> WeightProblem:
        """The fused-NLL objective over the last ``fit_tokens`` seed positions of the analysed text.

        With ``support_k`` the member log-probs are computed only on each position's support (see
        `lmfuse.ensemble.support`); with ``support_k=None`` every member row is projected in full (exact).
        """
        s, seed_run = a.seed, a.runs[a.seed]
        t_all = len(seed_run.ids)
        lo = max(0, t_all - self.fit_tokens)
        targets = torch.as_tensor(seed_run.ids[lo:], dtype=torch.long)
        present = a.present[:, lo:]
        index = [torch.as_tensor(a.index[k][lo:], dtype=torch.long) for k in range(len(a.runs))]
        seed_width = self.members[s].logits_width
        if self.support_k is not None and self.support_k < seed_width:
            lp = restricted_problem([r.rows for r in a.runs], index, present, targets,
                                    [self.preimages(k, s) for k in range(len(a.runs))], self.support_k,
                                    SUPPORT_POOL * self.support_k, self.fusion == "product")
            targets = torch.zeros(len(targets), dtype=torch.long)
        else:  # absent rows (index -1) read row 0 and are masked out by ``present``
            lp = torch.stack([self.project(k, s, run.rows[idx.clamp_min(0)])
                              for k, (run, idx) in enumerate(zip(a.runs, index, strict=True))])  # [K, T, V_s]
        return WeightProblem(nll=a.nll, log_probs=lp, targets=targets, present=present, fusion=self.fusion)

    def fit(self, a: Analysis, weighting: str | None = None,
            problem: WeightProblem | None = None) -> tuple[torch.Tensor, WeightReport]:
        name = weighting or self.weighting
        t0 = time.perf_counter()
        needs_objective = name in ("packllm-opt", "joint-eg") and len(self.members) > 1
        if problem is None:
            problem = self.problem(a) if needs_objective else WeightProblem(nll=a.nll, fusion=self.fusion)
        w = fit_weights(name, problem, self.options)
        fitted = float(problem.objective(w)) if problem.log_probs is not None else None
        report = WeightReport(self.names, [float(x) for x in w], [float(x) for x in a.nll], self.nll_norm,
                              self.names[a.seed], name, self.fusion, fitted, time.perf_counter() - t0,
                              a.forward_seconds)
        return w, report

    def weights(self, prompt: str, weighting: str | None = None) -> WeightReport:
        """Each member's weight and NLL on ``prompt``, and the seed; ``str()`` explains them."""
        return self.fit(self.analyse(prompt), weighting)[1]

    # ---- fused scoring --------------------------------------------------------------------------------
    def fused_logprobs(self, seed: int, targets: Sequence[int], rows: Sequence[torch.Tensor | None],
                       index: Sequence[Sequence[int]], weights: dict[str, torch.Tensor],
                       chunk: int = 128) -> dict[str, torch.Tensor]:
        """Fused log-prob of each seed target token, per weight vector; positions in chunks (memory)."""
        out: dict[str, list[torch.Tensor]] = {name: [] for name in weights}
        rule = FUSIONS.get(self.fusion)
        n = len(targets)
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            tgt = torch.as_tensor(list(targets[lo:hi]), dtype=torch.long)
            stack, present = [], []
            for k, r in enumerate(rows):
                idx = torch.as_tensor(list(index[k][lo:hi]), dtype=torch.long)
                have = idx >= 0 if r is not None else torch.zeros(hi - lo, dtype=torch.bool)
                present.append(have)
                if r is None or not bool(have.any()):
                    stack.append(torch.zeros(hi - lo, self.members[seed].logits_width))
                else:
                    stack.append(self.project(k, seed, r[idx.clamp_min(0)]))
            lp = torch.stack(stack)  # [K, n, V_s]
            pres = torch.stack(present)  # [K, n]
            for name, w in weights.items():
                ww = renormalise(w, pres, seed)
                out[name].append(rule(lp, ww).gather(-1, tgt[:, None])[:, 0])
        return {name: torch.cat(v) if v else torch.zeros(0) for name, v in out.items()}

    def scorer(self, weightings: Sequence[str] = (DEFAULT_WEIGHTING,)) -> PackScorer:
        return PackScorer(self, list(weightings))

    def score(self, context: str, continuations: Sequence[str]) -> list[float]:
        """Fused ``log p(continuation | context)`` of each continuation with the pack's own weighting."""
        system = f"pack[{self.weighting}]"
        return self.scorer([self.weighting]).loglikelihood(context, continuations)[system]

    # ---- generation -----------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, temperature: float = 0.0,
                 top_p: float = 1.0, stop: Sequence[str] = (), seed: int | None = None) -> list[Any]:
        """Fused generation for each prompt (one after the other); see `lmfuse.ensemble.generate`."""
        from lmfuse.ensemble.generate import generate

        return [generate(self, p, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                         stop=stop, seed=self.seed if seed is None else seed + i)
                for i, p in enumerate(prompts)]

    def stream(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
               stop: Sequence[str] = (), seed: int | None = None) -> Iterator[str]:
        """An iterator of decoded text pieces; its ``.weights`` (`WeightReport`) is set before the first
        piece is requested, and ``.finish_reason`` / ``.n_tokens`` once it is exhausted."""
        from lmfuse.ensemble.generate import Stream

        return Stream(self, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                      stop=stop, seed=self.seed if seed is None else seed)


def renormalise(weights: torch.Tensor, present: torch.Tensor, seed: int) -> torch.Tensor:
    """``[K]`` weights -> ``[K, n]``: renormalised over the members present at each position.

    Where no present member has weight (the weighted members all abstain), the seed speaks alone.
    """
    w = weights[:, None] * present
    total = w.sum(0, keepdim=True)
    alone = torch.zeros_like(w)
    alone[seed] = 1.0
    return torch.where(total > 0, w / total.clamp_min(1e-30), alone)


@dataclass
class PackScorer:
    """`lmfuse.eval.scorer.Scorer` for a pack: each member alone plus ``pack[<weighting>]`` per strategy,
    all from one set of member forward passes per example (weights fitted on the context)."""

    pack: Pack
    weightings: list[str]
    reuse_prefix: bool = True  # False re-reads the context for every option (the benchmark's baseline)
    window: int | None = None  # rolling-window tokens for whole texts (default: each member's context)
    _last: dict[str, dict[str, float]] = field(default_factory=dict, init=False, repr=False)  # last_weights

    def __post_init__(self) -> None:
        for w in self.weightings:
            WEIGHTINGS.get(w)

    def systems(self) -> list[str]:
        return [*self.pack.names, *(f"pack[{w}]" for w in self.weightings)]

    def provenance(self) -> dict[str, Any]:
        pack = self.pack
        out: dict[str, Any] = {m.name: {"source": m.source, "dtype": str(m.dtype).removeprefix("torch."),
                                        "context_length": m.context_length, **m.info} for m in pack.members}
        for w in self.weightings:
            out[f"pack[{w}]"] = {"members": pack.names, "weighting": w, "fusion": pack.fusion,
                                 "nll_norm": pack.nll_norm, "seed_member": pack.seed_member or "lowest NLL",
                                 "fit_tokens": pack.fit_tokens, "support_k": pack.support_k,
                                 "weights_fitted_on": "the context (prompt) only"}
        return out

    def _weights(self, a: Analysis) -> dict[str, torch.Tensor]:
        problem: WeightProblem | None = None
        out = {}
        for name in self.weightings:
            if name in ("packllm-opt", "joint-eg") and problem is None and len(self.pack.members) > 1:
                problem = self.pack.problem(a)
            out[f"pack[{name}]"] = self.pack.fit(a, name, problem)[0]
        return self._remember(out)

    def _remember(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self._last = {system: dict(zip(self.pack.names, (float(x) for x in w), strict=True))
                      for system, w in weights.items()}
        return weights

    def last_weights(self) -> dict[str, dict[str, float]]:
        """Each strategy's member weights in the last call (`lmfuse.eval.scorer.ExplainsWeights`)."""
        return dict(self._last)

    def loglikelihood(self, context: str, continuations: Sequence[str]) -> dict[str, list[float]]:
        pack = self.pack
        if not continuations:
            return {name: [] for name in self.systems()}
        # Context and continuations are tokenized apart (one boundary for every member), so spaces ending
        # the context ("A: ") move to the continuations: read alone they would be a stray token that no
        # tokenizer produces before a word. A final newline stays: tokenizers end a line there (Qwen's
        # ":\n" is one token). `MemberScorer` draws the same line, so the members' columns agree with
        # evaluating each member alone.
        stripped = context.rstrip(HORIZONTAL_SPACE)
        if stripped != context:
            continuations = [context[len(stripped):] + c for c in continuations]
            context = stripped
        reads = [read_with_continuations(m, context, continuations, self.reuse_prefix) for m in pack.members]
        result: dict[str, list[float]] = {
            m.name: [float(r.token_logprobs.sum()) for r in conts] for m, (_, conts) in zip(pack.members, reads,
                                                                                              strict=True)}
        if context and all(ctx.ids for ctx, _ in reads):
            a = pack.analyse(context, [ctx for ctx, _ in reads])
            weights, seed = self._weights(a), a.seed
        else:  # no context to weigh members on: the first member is the seed, weights as the strategy says
            seed = 0 if pack.seed_member is None else pack.names.index(pack.seed_member)
            base = Analysis(context, [], torch.zeros(len(pack.members)), seed, torch.zeros(0), [], 0.0)
            weights = self._remember({f"pack[{n}]": pack.fit(base, n, WeightProblem(nll=base.nll))[0]
                                      for n in self.weightings})
        for name in weights:
            result[name] = []
        for j, cont in enumerate(continuations):
            seed_run = reads[seed][1][j]
            index = [boundary_index(cont, seed_run.offsets, conts[j].offsets) for _, conts in reads]
            index[seed] = list(range(len(seed_run.ids)))
            scores = pack.fused_logprobs(seed, seed_run.ids, [conts[j].rows for _, conts in reads], index, weights)
            for name, v in scores.items():
                result[name].append(float(v.sum()))
        return result

    def text_logprob(self, texts: Sequence[str]) -> dict[str, list[float]]:
        """Whole-text log-probs; the pack's weights are fitted on the text itself (transductively, as
        PackLLM's language-modelling set-up does: the weights see the text they score)."""
        pack = self.pack
        result: dict[str, list[float]] = {name: [] for name in self.systems()}
        for text in texts:
            runs = [read_text(m, text, self.window) for m in pack.members]
            for m, r in zip(pack.members, runs, strict=True):
                result[m.name].append(float(r.token_logprobs.sum()))
            a = pack.analyse(text, runs)
            weights = self._weights(a)
            scores = pack.fused_logprobs(a.seed, runs[a.seed].ids, [r.rows for r in runs], a.index, weights)
            for name, v in scores.items():
                result[name].append(float(v.sum()))
        return result


def pack_scorer(pack: Pack, weightings: Sequence[str] = (DEFAULT_WEIGHTING,), window: int | None = None,
                reuse_prefix: bool = True) -> PackScorer:
    """The scorer `lmfuse eval --pack ... --weighting a,b,c` evaluates (see `PackScorer`)."""
    return PackScorer(pack, list(weightings), reuse_prefix=reuse_prefix, window=window)
