"""Paper-faithful fusion over a seed vocabulary (``alignment="mined"``): PackLLM's token-level scoring.

What the PackLLM paper's released code does (Mavromatis et al. 2024, arXiv 2404.11531; ``cmavro/PackLLM``
@479e77d, ``downstream_tasks/modeling_llm_fusion.py``), per example:

1. **Seed tokenizer**: the member that reads the text best in its own tokens (`SeedFusion.choose_seed`);
2. **Static MinED maps** from the seed's vocabulary onto every other member's: one expert id per seed id
   (`SeedMaps`, built by `lmfuse.alignment.build_vocab_map` with source = seed, target = expert, and cached
   under ``$LMFUSE_HOME/vocab-maps``);
3. **Input side**: the text is tokenized by the seed only; every other member reads the seed's ids
   translated token by token into its own (`SeedMaps.translate`), after its own prefix token: the same
   positions as the seed's, the seed's segmentation;
4. **Output side**: each member's next-token log-probs are column-gathered into the seed vocabulary
   (`gathered`) and renormalised over it (the paper's softmax over the gathered logits);
5. all K aligned distributions are fused over the seed vocabulary (``FUSIONS``: product, as the paper, or
   mixture), with weights fitted on the prompt's fused NLL per seed token (the paper's packllm-opt grid);
6. a continuation's score is the sum of its seed tokens' fused log-probs.

Where lmfuse differs from the reference, and why:

* **The maps follow lmfuse's rules** (`lmfuse.alignment.vocab`), not the reference's raw-string MinED:
  special tokens map by role (BOS to BOS, else by name, else to nothing), byte tokens only to a token with
  the same bytes, and edit distances are measured on surface text (``Ġthe`` = ``▁the`` = `` the``), not on
  the raw piece strings (where ``Ċ`` and ``<0x0A>`` never meet). A seed id without a counterpart is
  unmapped: on the output side its column is ``-inf`` (product fusion: that member vetoes it; the
  reference maps every id to *some* string); on the input side the member reads its UNK token, else its EOS.
* **The seed** is the lowest NLL as the pack's ``nll_norm`` says (default per byte; the reference compares
  mean NLL per token, which favours tokenizers with short tokens: ``nll_norm="token"`` is the paper's), on
  the scored context (with its demonstrations), not on the bare question the reference uses; the members'
  own readings of it are the ones their columns are scored from, so it costs no forward pass. A fixed
  ``seed_member`` is the reference's ``--tokenizer_name``.
* **The weights are fitted once per question on the prompt** (its last `FIT_TOKENS` seed tokens), as the
  paper words it, not on prompt + option for every option as the reference code does. The NLLs the
  strategies rank by (top1, packllm-sim, packllm-opt's order) are, as in the reference, each member's mean
  NLL per seed token over the fitted tokens, with its gathered distributions.
* Each member reads with its own prefix token (BOS, else EOS), not the seed's BOS translated.
* Logit columns at or beyond a tokenizer's length (Qwen pads 151,665 tokens to 151,936 logits) are never a
  seed token nor a target, as the reference truncates phi-2's; so the seed itself is renormalised over its
  tokenizer's ids, which moves its log-probs by the (tiny, for trained models) mass of its padding columns.

Memory and time: the seed vocabulary is up to 262,144 ids (Gemma-3), so the aligned distributions
``[K, T, S]`` are built only `CHUNK` positions at a time when scoring, and the fit holds ``[K, FIT_TOKENS, S]``
(3 x 128 x 262,144 float32: 0.4 GB); packllm-opt evaluates the fused NLL over it 21 x (K - 1) times.
Building a MinED map the first time costs seconds to minutes per pair of real vocabularies (then it is
read from the cache). Only scoring: the released code has no generation path, nor has this one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from lmfuse.alignment import TokenTable, build_vocab_map
from lmfuse.ensemble.pack import Pack
from lmfuse.ensemble.runs import IdExample, TextRun, read_ids
from lmfuse.ensemble.weighting import WeightProblem, fit_weights, fused
from lmfuse.errors import InputError
from lmfuse.models.member import Member

FIT_TOKENS = 128  # the prompt's last seed tokens the weights are fitted on (the reference fits on <= ~256)
CHUNK = 32  # positions gathered into the seed vocabulary at once when scoring ([K, 32, S] float32)


def gathered(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``[T, S]``: a member's log-prob rows ``[T, V]`` column-gathered into the seed vocabulary by ``index
    [S]`` (its id for each seed id, -1: none, whose column is ``-inf``), renormalised over the seed ids."""
    out = rows.index_select(1, index.clamp_min(0)).masked_fill(index < 0, -math.inf)
    return out - torch.logsumexp(out, dim=-1, keepdim=True)


class SeedMaps:
    """The static maps of every (seed, member) pair, built once each: member k's id for every seed id."""

    def __init__(self, members: Sequence[Member], tables: Any) -> None:
        self.members = list(members)
        self._tables = tables  # k -> member k's TokenTable (`PackVocab.table`)
        self._index: dict[tuple[int, int], torch.Tensor] = {}

    def table(self, k: int) -> TokenTable:
        return self._tables(k)

    def size(self, seed: int) -> int:
        """S: the seed vocabulary's size (its tokenizer's length)."""
        return self.table(seed).size

    def index(self, seed: int, k: int) -> torch.Tensor:
        """``[S]`` int64: member k's id for every seed id (-1: none, or beyond k's logits)."""
        if (seed, k) not in self._index:
            width = self.members[k].logits_width
            if k == seed:
                index = torch.arange(self.size(seed))
                index = index.masked_fill(index >= width, -1)
            else:  # source = seed, target = member k: the paper's direction
                vmap = build_vocab_map(self.table(seed), self.table(k), "mined", tgt_width=width)
                index = torch.from_numpy(vmap.index).long()
            self._index[(seed, k)] = index
        return self._index[(seed, k)]

    def translate(self, seed: int, k: int, ids: Sequence[int]) -> list[int]:
        """The seed's ``ids`` as member k reads them, token by token (not re-tokenized); an unmapped id
        becomes k's UNK token, else its EOS."""
        index = self.index(seed, k)
        tok = self.members[k].tokenizer
        fallback = next((int(t) for t in (tok.unk_token_id, tok.eos_token_id) if t is not None),
                        self.members[k].prefix_token_id)
        out = index[torch.as_tensor(list(ids), dtype=torch.long)].tolist() if ids else []
        return [t if t >= 0 else fallback for t in out]


@dataclass
class SeedReading:
    """Every member's rows on one stretch of text in the seed's tokens: ``rows[k]`` is ``[T, V_k]`` and its row
    ``t`` is member k's next-token distribution of ``ids[t]`` (in its own vocabulary)."""

    seed: int
    ids: list[int]
    rows: list[torch.Tensor]

    def tail(self, n: int) -> SeedReading:
        """The last ``n`` positions."""
        keep = min(n, len(self.ids))
        return SeedReading(self.seed, self.ids[len(self.ids) - keep:], [r[r.shape[0] - keep:] for r in self.rows])

    def aligned(self, maps: SeedMaps, lo: int, hi: int) -> torch.Tensor:
        """``[K, hi - lo, S]``: every member's distributions at positions ``lo..hi-1`` over the seed vocabulary."""
        return torch.stack([gathered(r[lo:hi], maps.index(self.seed, k)) for k, r in enumerate(self.rows)])

    def problem(self, maps: SeedMaps, fusion: str) -> WeightProblem:
        """The fused-NLL-per-seed-token objective over all positions; ``nll``: each member's mean NLL per seed
        token with its gathered distributions (the reference's losses)."""
        log_probs = self.aligned(maps, 0, len(self.ids))
        targets = torch.as_tensor(self.ids, dtype=torch.long)
        nll = -log_probs.gather(-1, targets[None, :, None].expand(len(self.rows), -1, 1))[..., 0].mean(1)
        return WeightProblem(nll=nll, log_probs=log_probs, targets=targets,
                             present=torch.ones(log_probs.shape[:2], dtype=torch.bool), fusion=fusion)

    def scores(self, maps: SeedMaps, weights: dict[str, torch.Tensor], fusion: str) -> dict[str, torch.Tensor]:
        """``{system: [T]}`` the fused log-prob of every seed token under each system's weights."""
        out: dict[str, list[torch.Tensor]] = {name: [] for name in weights}
        targets = torch.as_tensor(self.ids, dtype=torch.long)
        for lo in range(0, len(self.ids), CHUNK):
            hi = min(lo + CHUNK, len(self.ids))
            log_probs = self.aligned(maps, lo, hi)
            present = torch.ones(log_probs.shape[:2], dtype=torch.bool)
            for name, w in weights.items():
                out[name].append(fused(log_probs, w, present, fusion).gather(-1, targets[lo:hi, None])[:, 0])
        return {name: torch.cat(v) if v else torch.zeros(0) for name, v in out.items()}


Read = tuple[TextRun, list[TextRun]]  # a member's own reading of a context and of each continuation after it


class SeedFusion:
    """Scoring with ``alignment="mined"`` for a pack (`lmfuse.eval.pack_scorer.PackScorer` drives it): its
    fusion rule, weight options and fixed seed are the pack's config, read at every call."""

    def __init__(self, pack: Pack) -> None:
        self.pack = pack
        self.maps = SeedMaps(pack.members, pack.vocab.table)

    def choose_seed(self, nll: torch.Tensor | None) -> int:
        """The fixed ``seed_member``, else the lowest normalised NLL of the text in each member's own tokens
        (the first on ties; the first member when there is no text to read)."""
        if self.pack.seed_member is not None:
            return self.pack.names.index(self.pack.seed_member)
        return 0 if nll is None else int(torch.argmin(nll))

    def loglikelihoods(self, weightings: Sequence[str], examples: Sequence[tuple[str, list[Read]]]) -> list[
            tuple[dict[str, list[float]], dict[str, torch.Tensor]]]:
        """Per example (a context, and every member's own reading of it and of its continuations): each
        system's score of each continuation (the sum of its seed tokens' fused log-probs) and the weights."""
        pack = self.pack
        seeds = [self.choose_seed(pack.analyse(context, [ctx for ctx, _ in reads]).nll
                                  if context and all(ctx.ids for ctx, _ in reads) else None)
                 for context, reads in examples]
        translated = self.read(seeds, [(reads[s][0].ids, [c.ids for c in reads[s][1]])
                                       for s, (_, reads) in zip(seeds, examples, strict=True)])
        out = []
        for s, (_, reads), others in zip(seeds, examples, translated, strict=True):
            ctx_rows = [reads[s][0].rows if k == s else rows for k, (rows, _) in enumerate(others)]
            weights = self.weights(weightings, prompt_reading(s, reads[s][0].ids, ctx_rows))
            scores: dict[str, list[float]] = {name: [] for name in weights}
            for o, cont in enumerate(reads[s][1]):
                rows = [cont.rows if k == s else conts[o] for k, (_, conts) in enumerate(others)]
                for name, v in SeedReading(s, cont.ids, rows).scores(self.maps, weights, pack.fusion).items():
                    scores[name].append(float(v.sum()))
            out.append((scores, weights))
        return out

    def text(self, weightings: Sequence[str], text: str, runs: Sequence[TextRun], window: int | None,
             preceding: str | None = None) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """A whole text's log-prob under each system (``runs``: every member's own reading of it) and the
        weights: fitted on the text itself, or causally on ``preceding`` (the seed chosen there too)."""
        pack = self.pack
        if preceding:
            before = pack.analyse(preceding[-4 * pack.fit_bytes:])
            seed = self.choose_seed(before.nll)
            prompt = self.text_reading(seed, before.runs[seed].ids, before.runs[seed].rows, window)
            reading = self.text_reading(seed, runs[seed].ids, runs[seed].rows, window)
        else:
            seed = self.choose_seed(pack.analyse(text, runs).nll)
            reading = prompt = self.text_reading(seed, runs[seed].ids, runs[seed].rows, window)
        weights = self.weights(weightings, prompt)
        return {name: float(v.sum()) for name, v in reading.scores(self.maps, weights, pack.fusion).items()}, weights

    def read(self, seeds: Sequence[int], examples: Sequence[IdExample]) -> list[list[tuple[torch.Tensor, list[torch.Tensor]]]]:
        """Per example ``j`` (in seed ``seeds[j]``'s ids), every member but its seed reading it translated
        (`lmfuse.ensemble.runs.read_ids`; the context left-truncated to fit the member's context). Returns
        ``[j][k]`` (context rows, continuation rows); the seed's own entry is empty (its reading is the
        caller's: the same ids, the same rows)."""
        members = self.pack.members
        todo = {k: [j for j, s in enumerate(seeds) if s != k] for k in range(len(members))}

        def translated(k: int) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
            member, batch = members[k], []
            for j in todo[k]:
                ctx, conts = examples[j]
                longest = max((len(c) for c in conts), default=0)
                keep = member.context_length - 1 - longest
                if keep < 0:
                    raise InputError(f"member {member.name!r}: a continuation of {longest} seed tokens exceeds its "
                                     f"context of {member.context_length}")
                batch.append((self.maps.translate(seeds[j], k, list(ctx)[len(ctx) - keep:] if keep else []),
                              [self.maps.translate(seeds[j], k, c) for c in conts]))
            return read_ids(member, batch) if batch else []

        done = self.pack.workers.run({k: partial(translated, k) for k in todo if todo[k]})
        out: list[list[tuple[torch.Tensor, list[torch.Tensor]]]] = [
            [(torch.zeros(0), []) for _ in members] for _ in examples]
        for k, value in done.items():
            if isinstance(value, BaseException):
                raise value
            for j, reading in zip(todo[k], value, strict=True):
                out[j][k] = reading
        return out

    def text_reading(self, seed: int, ids: Sequence[int], seed_rows: torch.Tensor, window: int | None) -> SeedReading:
        """A whole text in the seed's ``ids`` (``seed_rows``: the seed's own rows of them): every other member
        reads it translated, in rolling windows as long texts are read (`lmfuse.models.member.Member.rows`)."""
        members = self.pack.members

        def translated(k: int) -> torch.Tensor:
            return members[k].rows(self.maps.translate(seed, k, ids), window)

        done = self.pack.workers.run({k: partial(translated, k) for k in range(len(members)) if k != seed})
        rows = []
        for k in range(len(members)):
            value = seed_rows if k == seed else done[k]
            if isinstance(value, BaseException):
                raise value
            rows.append(value)
        return SeedReading(seed, list(ids), rows)

    def weights(self, names: Sequence[str], prompt: SeedReading) -> dict[str, torch.Tensor]:
        """Each strategy's weights, fitted on the prompt's last `FIT_TOKENS` seed tokens (no prompt tokens:
        only the strategies that need no fused NLL)."""
        if not prompt.ids:
            if "packllm-opt" in names and len(self.pack.members) > 1:
                raise InputError("the context is empty, and packllm-opt fits the members' weights on the context "
                                 "(alignment 'mined'); give a context, or use uniform, fixed, top1 or packllm-sim")
            problem = WeightProblem(nll=torch.zeros(len(self.pack.members)), fusion=self.pack.fusion)
        else:
            problem = prompt.tail(FIT_TOKENS).problem(self.maps, self.pack.fusion)
        return {f"pack[{name}]": fit_weights(name, problem, self.pack.options) for name in names}


def prompt_reading(seed: int, ids: Sequence[int], rows: Sequence[torch.Tensor]) -> SeedReading:
    """The prompt positions every member has rows for (a member with a shorter context read only the end)."""
    n = min(r.shape[0] for r in rows)
    return SeedReading(seed, list(ids)[len(ids) - n:], [r[r.shape[0] - n:] for r in rows])
