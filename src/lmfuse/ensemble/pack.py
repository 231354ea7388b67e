"""`Pack`: K members fused at test time (PackLLM). Weights per prompt, fused scoring, fused generation.

Per prompt:
1. every member reads the prompt in its own tokenization (one forward pass each);
2. each member is read as the **exact byte-level model** its tokens define (`lmfuse.ensemble.bytelevel`):
   its probability of every next byte, from the same rows, by prefix covering. Fusion happens over bytes,
   so no vocabulary is shared and nothing is projected: with one-hot weights the pack *is* that member,
   and the product and mixture pools obey their bounds;
3. the weighting strategy fits ``lambda`` on the prompt's bytes (``WEIGHTINGS``; the objective is the fused
   NLL per byte of the prompt's last ``fit_bytes`` bytes), and the fusion rule (``FUSIONS``) combines the
   members' next-byte distributions. Scoring (`PackScorer`) sums the fused log-probs of the scored bytes;
4. decoding (`lmfuse.ensemble.generate`) emits the **seed** member's tokens (the largest weight, ties by the
   lowest normalised NLL, or the user's choice); every other member votes on them with its exact
   probability of the text that comes next (`lmfuse.ensemble.votes`).

NLL normalisation (``nll_norm``) is what makes members comparable when breaking seed ties and for the
NLL-based strategies: ``"token"`` (mean NLL per token of the member's own tokenization, the paper's) or
``"byte"`` (total NLL per UTF-8 byte of the prompt, the same denominator for every member; the default,
by measurement: see ``DEFAULT_NLL_NORM``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lmfuse.ensemble.bytelevel import N_OUTCOMES, ByteReading, SortedVocab, next_byte_logprobs
from lmfuse.ensemble.fusion import FUSIONS
from lmfuse.ensemble.runs import TextRun, read_text, read_with_continuations
from lmfuse.ensemble.votes import LeadMaps, Lexicon
from lmfuse.ensemble.weighting import WEIGHTINGS, WeightOptions, WeightProblem, fit_weights, renormalised
from lmfuse.errors import InputError
from lmfuse.eval.member_scorer import HORIZONTAL_SPACE
from lmfuse.models.member import Member

NLL_NORMS = ("token", "byte")
# Per byte, not the paper's per token: on the default pack packllm-opt was better with it on 4 of 6 text
# chunks (equal on 2) and on the 8-task development suite (acc_norm +0.015 [+0.006, +0.025], paired over
# 679 examples); docs/results/pack/README.md, "NLL per token or per byte".
DEFAULT_NLL_NORM = "byte"
DEFAULT_WEIGHTING = "packllm-opt"
# The weight fit reads the last 1,024 bytes of the prompt (~256 tokens, the span PackLLM's fit covered).
DEFAULT_FIT_BYTES = 1024


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
        for member, dropped in self.truncated.items():
            lines.append(f"  warning: {member} read only the end of the prompt ({dropped} earlier tokens did not fit)")
        return "\n".join(lines)


@dataclass
class Analysis:
    """Everything one prompt's forward passes give: runs per member, NLLs, and the fit inputs."""

    text: str
    runs: list[TextRun]
    nll: torch.Tensor  # [K] normalised
    forward_seconds: float


class Pack:
    """A pack of members fused at test time. Build with `Pack.load`."""

    def __init__(self, members: Sequence[Member], weighting: str = DEFAULT_WEIGHTING, fusion: str = "product",
                 seed_member: str | None = None, nll_norm: str = DEFAULT_NLL_NORM, seed: int = 0,
                 options: WeightOptions | None = None, fit_bytes: int = DEFAULT_FIT_BYTES) -> None:
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
        if fit_bytes < 1:
            raise InputError(f"fit_bytes must be a positive number of bytes, got {fit_bytes}")
        self.fit_bytes = fit_bytes
        self._same: dict[tuple[int, int], bool] = {}
        self._tables: dict[int, Any] = {}
        self._sorted: dict[int, SortedVocab] = {}
        self._lexicons: dict[int, Lexicon] = {}
        self._lead_maps: dict[tuple[int, int], LeadMaps] = {}

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

    def lexicon(self, k: int) -> Lexicon:
        """Member k's vocabulary as decoding votes read it (sorted surfaces, longest-prefix lookups)."""
        if k not in self._lexicons:
            from lmfuse.alignment import surface_index

            table, width = self._table(k), self.members[k].logits_width
            eos = self.members[k].tokenizer.eos_token_id
            self._lexicons[k] = Lexicon(self.sorted_vocab(k), surface_index(table, width), table.surface, width,
                                        None if eos is None else int(eos))
        return self._lexicons[k]

    def lead_maps(self, k: int, lead: int) -> LeadMaps:
        """Member k <-> lead vocabulary relations for k's votes while the lead decodes."""
        if (k, lead) not in self._lead_maps:
            self._lead_maps[(k, lead)] = LeadMaps.of(self.lexicon(k), self.lexicon(lead))
        return self._lead_maps[(k, lead)]

    def _table(self, k: int) -> Any:
        if k not in self._tables:
            from lmfuse.alignment import token_table

            self._tables[k] = token_table(self.members[k].tokenizer)
        return self._tables[k]

    # ---- prompt analysis and weights -------------------------------------------------------------------
    def normalised_nll(self, run: TextRun, text: str) -> float:
        total = -float(run.token_logprobs.sum())
        if self.nll_norm == "token":
            return total / len(run.ids)
        covered = text[run.offsets[0][0]:] if run.offsets else text
        return total / max(len(covered.encode("utf-8")), 1)

    def choose_seed(self, weights: torch.Tensor, nll: torch.Tensor) -> int:
        """The member whose tokens decoding emits: the fixed ``seed_member``, else the largest weight (ties:
        the lowest NLL), so with one-hot weights the pack decodes as that member alone."""
        if self.seed_member is not None:
            return self.names.index(self.seed_member)
        top = weights.max()
        return min((k for k in range(len(weights)) if float(weights[k]) >= float(top) - 1e-9),
                   key=lambda k: float(nll[k]))

    def analyse(self, text: str, runs: Sequence[TextRun] | None = None) -> Analysis:
        """Read ``text`` with every member (unless ``runs`` are given) and normalise each member's NLL."""
        if not text:
            raise InputError("cannot weigh members on an empty prompt")
        t0 = time.perf_counter()
        runs = list(runs) if runs is not None else [read_text(m, text) for m in self.members]
        forward = time.perf_counter() - t0
        nll = torch.tensor([self.normalised_nll(r, text) for r in runs])
        return Analysis(text, runs, nll, forward)

    def sorted_vocab(self, k: int) -> SortedVocab:
        """Member k's text tokens in lexicographic order of their surfaces (`lmfuse.ensemble.bytelevel`)."""
        if k not in self._sorted:
            self._sorted[k] = SortedVocab.of(self._table(k), self.members[k].logits_width)
        return self._sorted[k]

    def read_bytes(self, k: int, run: TextRun, text: str, span: tuple[int, int]) -> ByteReading:
        """Member k's exact next-byte distributions at bytes ``span`` of ``text``, from its own ``run``
        of the text (the same forward pass that scores it alone)."""
        table = self._table(k)
        first = len(text[: run.offsets[0][0]].encode("utf-8")) if run.offsets else 0
        return next_byte_logprobs(self.sorted_vocab(k), run.rows, run.ids, [table.surface[i] for i in run.ids],
                                  text.encode("utf-8"), first, span)

    def byte_problem(self, text: str, runs: Sequence[TextRun], span: tuple[int, int],
                     nll: torch.Tensor) -> WeightProblem:
        """Every member's next-byte distributions at bytes ``span`` of ``text`` as a `WeightProblem`
        (``log_probs [K, T, 257]``: the 256 bytes and ``OTHER``; ``targets`` the text's bytes): the fused-NLL
        objective per byte."""
        readings = [self.read_bytes(k, run, text, span) for k, run in enumerate(runs)]
        data = text.encode("utf-8")[span[0] : span[1]]
        return WeightProblem(nll=nll, log_probs=torch.stack([r.log_probs for r in readings]),
                             targets=torch.as_tensor(list(data), dtype=torch.long),
                             present=torch.stack([r.present for r in readings]), fusion=self.fusion)

    def problem(self, a: Analysis) -> WeightProblem:
        """The fused-NLL objective over the last ``fit_bytes`` bytes of the analysed text, with every
        member read as the exact byte-level model its tokens define (`lmfuse.ensemble.bytelevel`)."""
        n = len(a.text.encode("utf-8"))
        return self.byte_problem(a.text, a.runs, (max(0, n - self.fit_bytes), n), a.nll)

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
                              self.names[self.choose_seed(w, a.nll)], name, self.fusion, fitted, time.perf_counter() - t0,
                              a.forward_seconds)
        return w, report

    def weights(self, prompt: str, weighting: str | None = None) -> WeightReport:
        """Each member's weight and NLL on ``prompt``, and the seed; ``str()`` explains them."""
        return self.fit(self.analyse(prompt), weighting)[1]

    # ---- fused scoring --------------------------------------------------------------------------------
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


def last_positions(problem: WeightProblem, n: int) -> WeightProblem:
    """The same problem restricted to its last ``n`` positions."""
    assert problem.log_probs is not None and problem.targets is not None and problem.present is not None
    return WeightProblem(nll=problem.nll, log_probs=problem.log_probs[:, -n:], targets=problem.targets[-n:],
                         present=problem.present[:, -n:], fusion=problem.fusion)


def fused_byte_logprobs(problem: WeightProblem, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``[T]`` fused log-prob of each target byte of ``problem``, per weight vector.

    The weights are renormalised over the members present at each byte; where every present member has
    weight 0 they are equal over the present members (as in the fit's objective), and a byte no member
    can read gets 1/257 (uniform over the outcomes)."""
    assert problem.log_probs is not None and problem.targets is not None and problem.present is not None
    rule = FUSIONS.get(problem.fusion)
    present = problem.present
    anyone = present.any(0)
    out = {}
    for name, w in weights.items():
        fused = rule(problem.log_probs, renormalised(w, present)).gather(-1, problem.targets[:, None])[:, 0]
        out[name] = torch.where(anyone, fused, torch.full((), -math.log(float(N_OUTCOMES))))
    return out


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
                                 "nll_norm": pack.nll_norm, "seed_member": pack.seed_member or "largest weight",
                                 "fit_bytes": pack.fit_bytes, "probabilities": "exact byte-level (prefix covering)",
                                 "weights_fitted_on": "the context (prompt) only"}
        return out

    def _weights(self, a: Analysis, whole: WeightProblem | None = None) -> dict[str, torch.Tensor]:
        """Each strategy's weights fitted on ``a``; ``whole``: the byte problem of all of ``a``'s text,
        already read for scoring, whose last ``fit_bytes`` are the fit's (read once, not twice)."""
        problem: WeightProblem | None = None
        out = {}
        for name in self.weightings:
            if name in ("packllm-opt", "joint-eg") and problem is None and len(self.pack.members) > 1:
                problem = self.pack.problem(a) if whole is None else last_positions(whole, self.pack.fit_bytes)
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
            weights = self._weights(pack.analyse(context, [ctx for ctx, _ in reads]))
        else:  # no context to weigh members on: weights as the strategy says without NLLs
            fitted = [n for n in self.weightings if n in ("packllm-opt", "joint-eg")]
            if fitted and len(pack.members) > 1:
                raise InputError(f"the context is empty, and {fitted[0]} fits the members' weights on the context; "
                                 "give a context, or use uniform, fixed, top1 or packllm-sim")
            base = Analysis(context, [], torch.zeros(len(pack.members)), 0.0)
            weights = self._remember({f"pack[{n}]": pack.fit(base, n, WeightProblem(nll=base.nll))[0]
                                      for n in self.weightings})
        for name in weights:
            result[name] = []
        start = len(context.encode("utf-8"))
        for j, cont in enumerate(continuations):
            # Each member reads context + continuation in its own tokens (the context's, then the
            # continuation's); the fused score is the sum of the fused next-byte log-probs of the
            # continuation's bytes.
            text = context + cont
            runs = [_joined(ctx, conts[j], len(context)) for ctx, conts in reads]
            problem = pack.byte_problem(text, runs, (start, len(text.encode("utf-8"))), torch.zeros(len(runs)))
            for name, v in fused_byte_logprobs(problem, weights).items():
                result[name].append(float(v.sum()))
        return result

    def text_logprob(self, texts: Sequence[str], preceding: Sequence[str] | None = None) -> dict[str, list[float]]:
        """Whole-text log-probs. The pack's weights are fitted on the text itself (transductively, as
        PackLLM's language-modelling set-up does: the weights see the text they score), or, given
        ``preceding``, on the text before each one (causally, as in generation)."""
        pack = self.pack
        result: dict[str, list[float]] = {name: [] for name in self.systems()}
        for j, text in enumerate(texts):
            runs = [read_text(m, text, self.window) for m in pack.members]
            for m, r in zip(pack.members, runs, strict=True):
                result[m.name].append(float(r.token_logprobs.sum()))
            a = pack.analyse(text, runs)
            problem = pack.byte_problem(text, runs, (0, len(text.encode("utf-8"))), a.nll)
            if preceding is not None and preceding[j]:
                weights = self._weights(pack.analyse(preceding[j][-4 * pack.fit_bytes:]))
            else:
                weights = self._weights(a, problem)
            for name, v in fused_byte_logprobs(problem, weights).items():
                result[name].append(float(v.sum()))
        return result


def _joined(context: TextRun, continuation: TextRun, shift: int) -> TextRun:
    """A member's reading of context + continuation as one run (offsets into the joined text)."""
    if not context.ids:
        return TextRun(continuation.ids, [(a + shift, b + shift) for a, b in continuation.offsets], continuation.rows)
    return TextRun([*context.ids, *continuation.ids],
                   [*context.offsets, *((a + shift, b + shift) for a, b in continuation.offsets)],
                   torch.cat([context.rows, continuation.rows]))


def pack_scorer(pack: Pack, weightings: Sequence[str] = (DEFAULT_WEIGHTING,), window: int | None = None,
                reuse_prefix: bool = True) -> PackScorer:
    """The scorer `lmfuse eval --pack ... --weighting a,b,c` evaluates (see `PackScorer`)."""
    return PackScorer(pack, list(weightings), reuse_prefix=reuse_prefix, window=window)
