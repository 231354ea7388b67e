"""`Pack`: K members fused at test time (PackLLM). Weights per prompt, fused scoring, fused generation.

Per prompt:
1. every member reads the prompt in its own tokenization (one forward pass each);
2. each member is read as the **exact byte-level model** its tokens define (`lmfuse.ensemble.bytelevel`):
   its probability of every next byte, from the same rows, by prefix covering. Fusion happens over bytes,
   so no vocabulary is shared and nothing is projected: with one-hot weights the pack *is* that member,
   and the product and mixture pools obey their bounds;
3. the weighting strategy fits ``lambda`` on the prompt's bytes (``WEIGHTINGS``; the objective is the fused
   NLL per byte of the prompt's last ``fit_bytes`` bytes), and the fusion rule (``FUSIONS``) combines the
   members' next-byte distributions. Scoring (`lmfuse.eval.pack_scorer.PackScorer`) sums the fused
   log-probs of the scored bytes;
4. decoding (`lmfuse.ensemble.generate`) emits the **seed** member's tokens (the largest weight, ties by the
   lowest normalised NLL, or the user's choice); every other member votes on them with its exact
   probability of the text that comes next (`lmfuse.ensemble.votes`), many prompts per forward pass and
   the members at the same time.

How a pack is built is one typed `PackConfig` (`lmfuse.ensemble.config`); the vocabulary tables its members
need are `PackVocab` (`lmfuse.ensemble.vocab`).

NLL normalisation (``nll_norm``) is what makes members comparable when breaking seed ties and for the
NLL-based strategies: ``"token"`` (mean NLL per token of the member's own tokenization, the paper's) or
``"byte"`` (total NLL per UTF-8 byte of the prompt, the same denominator for every member; the default,
by measurement: see ``DEFAULT_NLL_NORM``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lmfuse.ensemble.config import MemberSpec, PackConfig
from lmfuse.ensemble.generate import Decoder, Decoding, Generation, MemberWorkers, Stream, generate_all
from lmfuse.ensemble.runs import TextRun, read_text
from lmfuse.ensemble.vocab import PackVocab
from lmfuse.ensemble.weighting import (
    FITS_ON_DEMONSTRATIONS,
    FITS_ON_OBJECTIVE,
    WeightOptions,
    WeightProblem,
    WeightReport,
    fit_weights,
)
from lmfuse.errors import InputError
from lmfuse.models.member import Member


@dataclass
class Analysis:
    """Everything one prompt's forward passes give: runs per member, NLLs, and the fit inputs."""

    text: str
    runs: list[TextRun]
    nll: torch.Tensor  # [K] normalised
    forward_seconds: float


class Pack:
    """A pack of members fused at test time. Build with `Pack.load`, or from loaded members with a
    `PackConfig` (or its fields as keywords: ``Pack(members, weighting="fixed", weights=[0.3, 0.7])``)."""

    def __init__(self, members: Sequence[Member], config: PackConfig | None = None, **fields: Any) -> None:
        if config is not None and fields:
            raise InputError(f"give a PackConfig or its fields, not both (got {', '.join(fields)})")
        self.config = config if config is not None else PackConfig.of(**fields)
        if not members:
            raise InputError("a pack needs at least one member")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise InputError(f"member names must be unique; got {names}")
        self.members = list(members)
        self._check(self.config)
        self.vocab = PackVocab(self.members)
        self.workers = MemberWorkers(self.members, parallel=self._parallel(self.config))

    @classmethod
    def load(cls, members: Sequence[str | MemberSpec | Member] = (), config: PackConfig | None = None,
             **fields: Any) -> Pack:
        """Load the members (zoo names, paths or hub ids, each optionally ``,device=...,dtype=...``; or
        `MemberSpec`s; or loaded `Member`s), or the config's, or the default pack when none are named.
        The other fields (or ``config``) are `PackConfig`'s."""
        from lmfuse.models.load import load_member

        loaded = [m for m in members if isinstance(m, Member)]
        if loaded and len(loaded) != len(members):
            raise InputError("members: give all as loaded Members or all as specs, not a mix")
        if config is None:
            config = PackConfig.of(**fields, **({"members": list(members)} if members and not loaded else {}))
        elif fields or (members and not loaded):
            raise InputError("give a PackConfig or its fields and members, not both")
        if loaded:
            return cls(loaded, config)
        specs = list(config.members)
        if not specs:
            from lmfuse.models import zoo

            specs = [MemberSpec(spec=name) for name in zoo.DEFAULT_PACK]
            if not specs:
                raise InputError("no members given and the default pack is empty")
        return cls([load_member(m.spec, name=m.name, dtype=m.dtype or config.dtype, device=m.device)
                    for m in specs], config)

    def reconfigure(self, **fields: Any) -> None:
        """Change config fields of a loaded pack (``pack.reconfigure(weighting="uniform")``), validated."""
        config = PackConfig.of(**{**self.config.model_dump(), **fields})
        self._check(config)
        if self._parallel(config) != self.workers.parallel:
            self.workers.close()
            self.workers = MemberWorkers(self.members, parallel=self._parallel(config))
        self.config = config

    def _parallel(self, config: PackConfig) -> bool:
        """Whether members run in their own worker threads: as configured, else when they are on more than
        one device."""
        if config.parallel is not None:
            return config.parallel
        return len({str(m.device) for m in self.members}) > 1

    def _check(self, config: PackConfig) -> None:
        """What a config must agree on with the loaded members."""
        names = self.names
        if config.seed_member is not None and config.seed_member not in names:
            raise InputError(f"seed member {config.seed_member!r} is not in the pack; members: {', '.join(names)}")
        if config.weights is not None and len(config.weights) != len(names):
            raise InputError(f"weights: {len(config.weights)} given for {len(names)} members ({', '.join(names)})")

    # The config's fields, read where the pack is used.
    @property
    def weighting(self) -> str:
        return self.config.weighting

    @property
    def fusion(self) -> str:
        return self.config.fusion

    @property
    def nll_norm(self) -> str:
        return self.config.nll_norm

    @property
    def seed_member(self) -> str | None:
        return self.config.seed_member

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def fit_bytes(self) -> int:
        return self.config.fit_bytes

    @property
    def options(self) -> WeightOptions:
        return self.config.options

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

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

    def byte_problem(self, text: str, runs: Sequence[TextRun], span: tuple[int, int],
                     nll: torch.Tensor, ends_text: bool = True) -> WeightProblem:
        """Every member's next-byte distributions at bytes ``span`` of ``text`` as a `WeightProblem`
        (``log_probs [K, T, 257]``: the 256 bytes and ``OTHER``; ``targets`` the text's bytes): the fused-NLL
        objective per byte. ``ends_text``: the text ends at the span's end (a continuation, a prompt), so a
        token must end there; False for a span inside the text (a demonstration's answer)."""
        readings = [self.vocab.read_bytes(k, run, text, span, ends_text) for k, run in enumerate(runs)]
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
        if name in FITS_ON_DEMONSTRATIONS and problem is None:
            raise InputError(f"weighting {name!r} fits the members' weights on the answers of labelled "
                             "demonstrations, which a prompt alone does not have: evaluate with k-shot "
                             "demonstrations (`lmfuse eval --shots K`, K >= 1), or use packllm-opt")
        t0 = time.perf_counter()
        needs_objective = name in FITS_ON_OBJECTIVE and len(self.members) > 1
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
        if self.config.alignment == "mined":
            # These would be the exact byte-level fit's, not those the mined scoring uses.
            raise InputError("alignment 'mined' fits the weights per example on the seed member's tokens while it "
                             "scores: read them from the scorer (`PackScorer.last_weights()`, the weight columns of "
                             "`lmfuse eval`); Pack.weights fits alignment 'exact''s objective")
        return self.fit(self.analyse(prompt), weighting)[1]

    # ---- generation -----------------------------------------------------------------------------------
    def _check_decodes(self) -> None:
        if self.config.alignment == "mined":
            raise InputError("alignment 'mined' (the paper's token-level fusion over a seed vocabulary) only "
                             "scores, as PackLLM's released code does (it has no generation path); generate with "
                             "alignment 'exact' (the default)")

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, temperature: float = 0.0,
                 top_p: float = 1.0, stop: Sequence[str] = (), seed: int | None = None,
                 batch_size: int | None = None) -> list[Generation]:
        """Fused generation for each prompt (`lmfuse.ensemble.generate`): the prompts decode together, each
        member's forward passes batched over them (at most ``batch_size`` prompts at a time; default all).
        Prompt ``i`` samples with seed ``seed + i`` (default: the pack's seed)."""
        self._check_decodes()
        first = self.seed if seed is None else seed
        decodings = [Decoding(self, p, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                              stop=stop, seed=first + i) for i, p in enumerate(prompts)]
        return [d.result() for d in generate_all(self, decodings, batch_size)]

    def decoding(self, prompt: str, **kwargs: Any) -> Decoding:
        """One prompt's decoding, to step with others in a `decoder` (the server's continuous batching)."""
        self._check_decodes()
        return Decoding(self, prompt, **kwargs)

    def decoder(self) -> Decoder:
        """A `Decoder`: steps many decodings together, prompts joining and leaving at any step."""
        self._check_decodes()
        return Decoder(self)

    def stream(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
               stop: Sequence[str] = (), seed: int | None = None) -> Stream:
        """An iterator of decoded text pieces; its ``.weights`` (`WeightReport`) is set before the first
        piece is requested, and ``.finish_reason`` / ``.n_tokens`` once it is exhausted."""
        self._check_decodes()
        return Stream(self, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                      stop=stop, seed=self.seed if seed is None else seed)
