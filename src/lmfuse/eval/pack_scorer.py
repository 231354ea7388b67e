"""`PackScorer`: the `lmfuse.eval.scorer.Scorer` protocol for a pack: each member alone, plus the pack under
each weighting strategy, all from one set of member forward passes per example.

Every member reads the text in its own tokens; the pack's score of a continuation is the sum of the fused
next-byte log-probs of its bytes, each member read as the exact byte-level model its tokens define
(`lmfuse.ensemble.bytelevel`), with weights fitted on the context (`lmfuse.ensemble.pack.Pack.fit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import torch

from lmfuse.ensemble.config import DEFAULT_WEIGHTING, MINED_WEIGHTINGS, not_mined
from lmfuse.ensemble.mined import FIT_TOKENS, SeedFusion
from lmfuse.ensemble.pack import Analysis, Pack
from lmfuse.ensemble.runs import TextRun, read_examples, read_text
from lmfuse.ensemble.weighting import (
    CHOICE_FIT_TASK,
    DEMO_FIT,
    DEMO_FIT_TASK,
    FITS_ON_DEMONSTRATIONS,
    FITS_ON_OBJECTIVE,
    FITTED_PER_TASK,
    ONLINE,
    WEIGHTINGS,
    ChoiceProblem,
    WeightProblem,
    follow,
    fused,
)
from lmfuse.errors import InputError
from lmfuse.eval.member_scorer import HORIZONTAL_SPACE
from lmfuse.eval.scorer import Demonstration

Read = tuple[TextRun, list[TextRun]]  # a member's reading of a context and of each continuation after it
FITTED_ON = {DEMO_FIT: "the answers of the demonstrations in the context",
             DEMO_FIT_TASK: "the answers of the task's demonstrations, pooled (never an evaluated example)",
             CHOICE_FIT_TASK: "choosing the correct options of the task's demonstrations, pooled (never an "
                              "evaluated example)",
             "uniform": "nothing: the strategy fixes them", "fixed": "nothing: the strategy fixes them"}
LEARN_BATCH = 16  # demonstrations read per forward pass by `PackScorer.learn`


def last_positions(problem: WeightProblem, n: int) -> WeightProblem:
    """The same problem restricted to its last ``n`` positions."""
    assert problem.log_probs is not None and problem.targets is not None and problem.present is not None
    return WeightProblem(nll=problem.nll, log_probs=problem.log_probs[:, -n:], targets=problem.targets[-n:],
                         present=problem.present[:, -n:], fusion=problem.fusion)


def joined_problems(problems: Sequence[WeightProblem]) -> WeightProblem:
    """One problem whose positions are those of ``problems`` in turn (same members, same NLLs)."""
    log_probs, targets, present = [], [], []
    for p in problems:
        assert p.log_probs is not None and p.targets is not None and p.present is not None
        log_probs.append(p.log_probs)
        targets.append(p.targets)
        present.append(p.present)
    if not targets or not sum(len(t) for t in targets):
        raise InputError("the demonstrations' answers have no bytes to fit the weights on")
    return WeightProblem(nll=problems[0].nll, log_probs=torch.cat(log_probs, 1), targets=torch.cat(targets),
                         present=torch.cat(present, 1), fusion=problems[0].fusion)


def fused_byte_logprobs(problem: WeightProblem, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``[T]`` fused log-prob of each target byte of ``problem``, per weight vector (the rule the fit's
    objective uses: `lmfuse.ensemble.weighting.fused`)."""
    assert problem.log_probs is not None and problem.targets is not None and problem.present is not None
    return {name: fused(problem.log_probs, w, problem.present, problem.fusion).gather(-1, problem.targets[:, None])[:, 0]
            for name, w in weights.items()}


@dataclass
class PackScorer:
    """`lmfuse.eval.scorer.Scorer` for a pack: each member alone plus ``pack[<weighting>]`` per strategy,
    all from one set of member forward passes per example (weights fitted on the context)."""

    pack: Pack
    weightings: list[str]
    reuse_prefix: bool = True  # False re-reads the context for every option (the benchmark's baseline)
    window: int | None = None  # rolling-window tokens for whole texts (default: each member's context)
    _last: list[dict[str, dict[str, float]]] = field(default_factory=list, init=False, repr=False)  # batch_weights
    _task_weights: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False)  # `learn`'s
    _seed_fusion: SeedFusion | None = field(default=None, init=False, repr=False)  # alignment "mined"'s maps

    def __post_init__(self) -> None:
        for w in self.weightings:
            WEIGHTINGS.get(w)
        if self.mined:
            self._mined()

    @property
    def mined(self) -> bool:
        """The pack fuses as the paper's code does: token level over a seed vocabulary (`lmfuse.ensemble.mined`)."""
        return self.pack.config.alignment == "mined"

    def _mined(self) -> SeedFusion:
        """The mined scoring, built once; the weightings are checked at every use (a pack can be reconfigured)."""
        for w in self.weightings:
            if w not in MINED_WEIGHTINGS:
                raise InputError(not_mined(w))
        if self._seed_fusion is None:
            self._seed_fusion = SeedFusion(self.pack)
        return self._seed_fusion

    def systems(self) -> list[str]:
        return [*self.pack.names, *(f"pack[{w}]" for w in self.weightings)]

    def provenance(self) -> dict[str, Any]:
        pack = self.pack
        out: dict[str, Any] = {m.name: {"source": m.source, "dtype": str(m.dtype).removeprefix("torch."),
                                        "context_length": m.context_length, **m.info} for m in pack.members}
        for w in self.weightings:
            out[f"pack[{w}]"] = {"members": pack.names, "weighting": w, "fusion": pack.fusion,
                                 "nll_norm": pack.nll_norm, "alignment": pack.config.alignment,
                                 **(self._mined_provenance() if self.mined else {
                                     "seed_member": pack.seed_member or "largest weight", "fit_bytes": pack.fit_bytes,
                                     "probabilities": "exact byte-level (prefix covering)"}),
                                 "weights_fitted_on": FITTED_ON.get(w, "the context (prompt) only")}
        return out

    def _mined_provenance(self) -> dict[str, Any]:
        return {"seed_member": self.pack.seed_member or f"lowest NLL per {self.pack.nll_norm} of the context",
                "fit_tokens": FIT_TOKENS,
                "probabilities": "token level over the seed's vocabulary: static MinED maps seed -> member, ids "
                                 "translated token by token, log-probs gathered and renormalised (PackLLM's code)"}

    def _weights(self, a: Analysis, whole: WeightProblem | None = None,
                 demos: WeightProblem | None = None) -> dict[str, torch.Tensor]:
        """Each strategy's weights fitted on ``a``; ``whole``: the byte problem of all of ``a``'s text,
        already read for scoring, whose last ``fit_bytes`` are the fit's (read once, not twice); ``demos``:
        the problem of the demonstrations' answers in it (`_demonstrations`), for ``demo-fit``."""
        problem: WeightProblem | None = None
        out = {}
        for name in self.weightings:
            if name in FITTED_PER_TASK:
                if name not in self._task_weights:
                    raise InputError(self._needs_shots())
                out[f"pack[{name}]"] = self._task_weights[name]
                continue
            if name in FITS_ON_OBJECTIVE and problem is None and len(self.pack.members) > 1:
                problem = self.pack.problem(a) if whole is None else last_positions(whole, self.pack.fit_bytes)
            out[f"pack[{name}]"] = self.pack.fit(a, name, demos if name in FITS_ON_DEMONSTRATIONS else problem)[0]
        return out

    def learn(self, demonstrations: Sequence[Demonstration]) -> None:
        """The per-task strategies' weights for the task about to be scored, fitted on its solved examples
        (`lmfuse.eval.scorer.LearnsFromDemonstrations`): ``demo-fit-task`` on the bytes of their correct
        options, ``choice-fit-task`` on choosing them among all their options; each option read after its
        question, as evaluation reads it."""
        self._task_weights = {}
        chosen = [w for w in self.weightings if w in FITTED_PER_TASK]
        if not chosen:
            return
        if not demonstrations:
            raise InputError(self._needs_shots())
        every_option = CHOICE_FIT_TASK in chosen  # demo-fit-task alone reads only the answers
        per_option: list[list[WeightProblem]] = []  # per demonstration, its options' problems
        for b in range(0, len(demonstrations), LEARN_BATCH):
            batch = demonstrations[b : b + LEARN_BATCH]
            requests = [(d.context, d.options if every_option else (d.answer,)) for d in batch]
            examples, per_member = self._read(requests)
            for j, (context, options) in enumerate(examples):
                reads = [reads_k[j] for reads_k in per_member]
                per_option.append([self._option_problem(context, o, reads, i) for i, o in enumerate(options)])
        answers = [options[d.correct[0] if every_option else 0] for d, options in zip(demonstrations, per_option,
                                                                                       strict=True)]
        for name in chosen:
            problem = choice_problem(demonstrations, per_option) if name == CHOICE_FIT_TASK else joined_problems(answers)
            self._task_weights[name] = self.pack.fit(Analysis("", [], problem.nll, 0.0), name, problem)[0]

    def _option_problem(self, context: str, option: str, reads: list[Read], j: int) -> WeightProblem:
        """The byte problem of option ``j`` after its context: each member reads context + option in its own
        tokens (the context's, then the option's), and the positions are the option's bytes."""
        text = context + option
        runs = [_joined(ctx, conts[j], len(context)) for ctx, conts in reads]
        return self.pack.byte_problem(text, runs, (len(context.encode("utf-8")), len(text.encode("utf-8"))),
                                      torch.zeros(len(runs)))

    def _read(self, requests: Sequence[tuple[str, Sequence[str]]]) -> tuple[list[tuple[str, list[str]]], list[list[Read]]]:
        """The examples as the members read them (context, continuations), and each member's reading of each
        example that has continuations: two batched passes per member, the members at the same time."""
        # Context and continuations are tokenized apart (one boundary for every member), so spaces ending
        # the context ("A: ") move to the continuations: read alone they would be a stray token that no
        # tokenizer produces before a word. A final newline stays: tokenizers end a line there (Qwen's
        # ":\n" is one token). `MemberScorer` draws the same line, so the members' columns agree with
        # evaluating each member alone.
        examples = []
        for context, continuations in requests:
            stripped = context.rstrip(HORIZONTAL_SPACE)
            examples.append((stripped, [context[len(stripped):] + c for c in continuations]))
        scored = [e for e in examples if e[1]]
        done = self.pack.workers.run({k: partial(read_examples, m, scored, self.reuse_prefix)
                                      for k, m in enumerate(self.pack.members)})
        for value in done.values():
            if isinstance(value, BaseException):
                raise value
        return examples, [cast(list[Read], done[k]) for k in range(len(self.pack.members))]

    def _demonstrations(self, a: Analysis, answers: Sequence[tuple[int, int]]) -> WeightProblem | None:
        """The fused-NLL problem of the demonstrations' answers in the analysed context (character
        ``answers`` spans), each byte given everything before it; None when no strategy fits on it."""
        if DEMO_FIT not in self.weightings:
            return None
        if not answers:
            raise InputError(self._needs_shots())
        spans = [(len(a.text[:s].encode("utf-8")), len(a.text[:e].encode("utf-8"))) for s, e in answers]
        return joined_problems([self.pack.byte_problem(a.text, a.runs, span, a.nll, ends_text=False)
                                for span in spans if span[1] > span[0]])

    def _demo_weighting(self) -> str:
        return next(n for n in self.weightings if n in FITS_ON_DEMONSTRATIONS)

    def _needs_shots(self) -> str:
        return (f"weighting {self._demo_weighting()!r} fits the members' weights on the answers of solved "
                "demonstrations, and there are none: evaluate multiple-choice tasks with --shots K (K >= 1)")

    def _explained(self, weights: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
        """``{system: {member: weight}}`` as `last_weights` reports them."""
        return {system: dict(zip(self.pack.names, (float(x) for x in w), strict=True))
                for system, w in weights.items()}

    def last_weights(self) -> dict[str, dict[str, float]]:
        """Each strategy's member weights for the last item scored (`lmfuse.eval.scorer.ExplainsWeights`)."""
        return dict(self._last[-1]) if self._last else {}

    def batch_weights(self) -> list[dict[str, dict[str, float]]]:
        """`last_weights` of each example of the last `loglikelihood_many` call, in order."""
        return list(self._last)

    def loglikelihood(self, context: str, continuations: Sequence[str]) -> dict[str, list[float]]:
        return self.loglikelihood_many([(context, continuations)])[0]

    def loglikelihood_many(self, requests: Sequence[tuple[str, Sequence[str]]],
                           answers: Sequence[Sequence[tuple[int, int]]] | None = None) -> list[dict[str, list[float]]]:
        """`loglikelihood` of several examples: each member reads all of them in two batched passes
        (`lmfuse.ensemble.runs.read_examples`), the members at the same time (`Pack.workers`). ``answers``:
        the demonstrations' answer spans in each context, which ``demo-fit`` fits the weights on."""
        if answers is None:
            answers = [[] for _ in requests]
        if len(answers) != len(requests):
            raise InputError(f"{len(answers)} lists of demonstration answers for {len(requests)} examples")
        examples, per_member = self._read(requests)
        if self.mined:
            return self._mined_loglikelihoods(examples, per_member)
        # An answer that ran into the context's stripped spaces keeps the part still in the context.
        spans = [[(a, min(e, len(context))) for a, e in demo_answers if a < len(context)]
                 for (context, _), demo_answers in zip(examples, answers, strict=True)]
        out: list[dict[str, list[float]]] = []
        explained: list[dict[str, dict[str, float]]] = []
        j = 0
        for (context, continuations), demo_answers in zip(examples, spans, strict=True):
            if not continuations:
                out.append({name: [] for name in self.systems()})
                explained.append({})
                continue
            reads = [reads_k[j] for reads_k in per_member]
            j += 1
            scores, weights = self._fuse(context, continuations, reads, demo_answers)
            out.append(scores)
            explained.append(self._explained(weights))
        self._last = explained
        return out

    def _mined_loglikelihoods(self, examples: list[tuple[str, list[str]]],
                              per_member: list[list[Read]]) -> list[dict[str, list[float]]]:
        """``alignment="mined"``: each member's own column, and the pack's over the seed vocabulary
        (`lmfuse.ensemble.mined.SeedFusion.loglikelihoods`)."""
        scored = [(context, [reads_k[j] for reads_k in per_member])
                  for j, (context, _) in enumerate(e for e in examples if e[1])]
        fused_scores = self._mined().loglikelihoods(self.weightings, scored)
        out: list[dict[str, list[float]]] = []
        explained: list[dict[str, dict[str, float]]] = []
        j = 0
        for _, continuations in examples:
            if not continuations:
                out.append({name: [] for name in self.systems()})
                explained.append({})
                continue
            (scores, weights), (_, reads) = fused_scores[j], scored[j]
            j += 1
            out.append({**{m.name: [float(r.token_logprobs.sum()) for r in conts]
                           for m, (_, conts) in zip(self.pack.members, reads, strict=True)}, **scores})
            explained.append(self._explained(weights))
        self._last = explained
        return out

    def _fuse(self, context: str, continuations: list[str], reads: list[Read],
              answers: Sequence[tuple[int, int]] = ()) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
        """One example's scores (each member's own, and the pack's per weighting) and the weights used;
        ``answers``: the demonstrations' answer spans in the context."""
        pack = self.pack
        result: dict[str, list[float]] = {
            m.name: [float(r.token_logprobs.sum()) for r in conts] for m, (_, conts) in zip(pack.members, reads,
                                                                                              strict=True)}
        if context and all(ctx.ids for ctx, _ in reads):
            a = pack.analyse(context, [ctx for ctx, _ in reads])
            weights = self._weights(a, demos=self._demonstrations(a, answers))
        else:  # no context to weigh members on: weights as the strategy says without NLLs
            fitted = [n for n in self.weightings if n in (*FITS_ON_OBJECTIVE, DEMO_FIT)]
            if fitted and len(pack.members) > 1:
                raise InputError(f"the context is empty, and {fitted[0]} fits the members' weights on the context; "
                                 "give a context, or use uniform, fixed, top1 or packllm-sim")
            base = Analysis(context, [], torch.zeros(len(pack.members)), 0.0)
            weights = self._weights(base)
        for name in weights:
            result[name] = []
        for j, cont in enumerate(continuations):
            # The fused score is the sum of the fused next-byte log-probs of the continuation's bytes.
            problem = self._option_problem(context, cont, reads, j)
            for name, v in fused_byte_logprobs(problem, self._following(weights, problem)).items():
                result[name].append(float(v.sum()))
        return result, weights

    def text_logprob(self, texts: Sequence[str], preceding: Sequence[str] | None = None) -> dict[str, list[float]]:
        """Whole-text log-probs. The pack's weights are fitted on the text itself (transductively, as
        PackLLM's language-modelling set-up does: the weights see the text they score), or, given
        ``preceding``, on the text before each one (causally, as in generation)."""
        pack = self.pack
        if any(n in FITS_ON_DEMONSTRATIONS for n in self.weightings):
            raise InputError(f"weighting {self._demo_weighting()!r} fits the members' weights on the answers of "
                             "solved demonstrations, which a text does not have: score text with packllm-opt or online")
        result: dict[str, list[float]] = {name: [] for name in self.systems()}
        for j, text in enumerate(texts):
            runs = [read_text(m, text, self.window) for m in pack.members]
            for m, r in zip(pack.members, runs, strict=True):
                result[m.name].append(float(r.token_logprobs.sum()))
            if self.mined:
                scores, weights = self._mined().text(self.weightings, text, runs, self.window,
                                                     preceding[j] if preceding is not None else None)
                self._last = [self._explained(weights)]
                for name, value in scores.items():
                    result[name].append(value)
                continue
            a = pack.analyse(text, runs)
            problem = pack.byte_problem(text, runs, (0, len(text.encode("utf-8"))), a.nll)
            if preceding is not None and preceding[j]:
                weights = self._weights(pack.analyse(preceding[j][-4 * pack.fit_bytes:]))
            else:
                weights = self._weights(a, problem)
            self._last = [self._explained(weights)]
            for name, v in fused_byte_logprobs(problem, self._following(weights, problem)).items():
                result[name].append(float(v.sum()))
        return result

    def _following(self, weights: dict[str, torch.Tensor], problem: WeightProblem) -> dict[str, torch.Tensor]:
        """``online``'s weights per position of ``problem`` (`lmfuse.ensemble.weighting.follow`), from the
        weights fitted before it; the other strategies' as they are."""
        system = f"pack[{ONLINE}]"
        if system not in weights:
            return weights
        assert problem.log_probs is not None and problem.targets is not None and problem.present is not None
        path = follow(weights[system], problem.log_probs, problem.targets, problem.present,
                      self.pack.options.online_rate, problem.fusion)
        return {**weights, system: path}


def choice_problem(demonstrations: Sequence[Demonstration], per_option: Sequence[Sequence[WeightProblem]]) -> ChoiceProblem:
    """``choice-fit-task``'s problem: every option of every demonstration (``per_option``: each
    demonstration's options' byte problems, in order), with each member's own choice loss as its NLL. An
    option's per-byte score divides by its own bytes, as ``acc_norm`` does (`lmfuse.eval.metrics.byte_normalised`)."""
    options = [p for ps in per_option for p in ps]
    joined = joined_problems(options)
    lengths = torch.tensor([len(cast(torch.Tensor, p.targets)) for p in options])
    problem = ChoiceProblem(
        nll=joined.nll, log_probs=joined.log_probs, targets=joined.targets, present=joined.present,
        fusion=joined.fusion, option_of=torch.repeat_interleave(torch.arange(len(options)), lengths),
        question_of=torch.repeat_interleave(torch.arange(len(per_option)), torch.tensor([len(ps) for ps in per_option])),
        correct=torch.tensor([i in d.correct for d in demonstrations for i in range(len(d.options))]),
        option_bytes=torch.tensor([len(o.encode("utf-8")) for d in demonstrations for o in d.options],
                                  dtype=torch.float32))
    problem.nll = torch.stack([problem.objective(torch.eye(joined.k)[i]) for i in range(joined.k)])
    return problem


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
