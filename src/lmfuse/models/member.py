"""`Member`: one causal LM of a pack, with its tokenizer, and the only forward passes lmfuse makes.

Conventions used everywhere in lmfuse:

* **Position i predicts token i+1.** ``log_probs(ids)[i]`` is the distribution of ``ids[i + 1]``.
* Every text a member scores is preceded by its *prefix token* (BOS when the tokenizer has one, else
  EOS, as lm-evaluation-harness does for models without BOS), so the first real token is scored too.
* Log-probabilities are float32 on the CPU whatever dtype and device the model runs in: only the rows
  fusion needs leave the member's device.
* Logit widths can exceed the tokenizer's length (Qwen pads to 151,936): ``logits_width`` is the
  model's, never ``len(tokenizer)``.

Three kinds of forward pass, all here:

* whole texts (``rows``, ``score_tokens``): rolling windows when a text is longer than the context;
* cached reading (``feed``): each sequence keeps its own KV cache (`new_cache`, rolled back with `crop_to`);
  the feeds of many sequences run as one left-padded batch, each at its own positions. Decoding uses it,
  and so does scoring: the contexts of several questions in one pass, then every option of every question
  after its context in one more;
* the model's own decoding (``generate``), for training data (ProFuser's replies).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lmfuse.errors import InputError, NumericalError

# Logit elements one batched cached forward pass may hold at once (float32: 1 GiB); bigger batches are split.
FEED_LOGITS_BUDGET = 1 << 28


@dataclass(frozen=True)
class Encoding:
    """A text in one member's tokenization. ``offsets[j]`` is the character span of ``ids[j]``."""

    ids: list[int]
    offsets: list[tuple[int, int]]


@dataclass(frozen=True)
class Feed:
    """Tokens to read after what one sequence's KV cache holds.

    ``last_only``: only the row after the last id is wanted (the LM head runs for that position alone: on
    Gemma-3 the head is most of the compute per token). ``extend=False``: the cache is read, not grown (the
    options of one question, each read after the same context)."""

    cache: Any  # transformers.DynamicCache
    ids: Sequence[int]
    last_only: bool = False
    extend: bool = True


def new_cache() -> Any:
    """A full-attention KV cache (no sliding-window layers), so it can always be rolled back."""
    from transformers import DynamicCache

    return DynamicCache()


def crop_to(cache: Any, length: int) -> None:
    """Roll ``cache`` back to its first ``length`` positions (transformers 5 crops by a negative count)."""
    remove = int(cache.get_seq_length()) - length
    if remove > 0:
        cache.crop(-remove)


def windows(n: int, window: int) -> list[tuple[int, int, int]]:
    """``(lo, start, end)`` per rolling window over ``n`` tokens read after the prefix token: the window
    predicts tokens ``start..end-1`` and reads ``[prefix, *ids][lo:end]``, so every token is predicted once,
    conditioned on up to ``window - 1`` tokens before it (``lo <= start``)."""
    out, start = [], 0
    while start < n:
        end = min(start + window, n)
        out.append((max(0, end - window), start, end))
        start = end
    return out


@dataclass
class Member:
    """A loaded causal LM and its tokenizer."""

    name: str
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    model: Any  # transformers.PreTrainedModel
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def logits_width(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def context_length(self) -> int:
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return 2048

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def prefix_token_id(self) -> int:
        tok = self.tokenizer
        for tid in (tok.bos_token_id, tok.eos_token_id):
            if tid is not None:
                return int(tid)
        raise InputError(f"member {self.name!r}: its tokenizer has neither a BOS nor an EOS token")

    @property
    def pad_token_id(self) -> int:
        tid = self.tokenizer.pad_token_id
        return int(tid) if tid is not None else self.prefix_token_id

    def encode(self, text: str) -> Encoding:
        """Tokenize ``text`` without special tokens, with character offsets."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return Encoding(list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]])

    # ---- whole texts ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """One right-padded forward pass.

        Returns ``(logits [B, T, V] in the model's dtype, mask [B, T] bool)``; V is ``logits_width``.
        Sequences must fit the context; longer ones are the caller's job (see ``score_tokens``).
        """
        if not batch or any(len(s) == 0 for s in batch):
            raise InputError(f"member {self.name!r}: empty sequence in a batch of {len(batch)}")
        longest = max(len(s) for s in batch)
        if longest > self.context_length:
            raise InputError(
                f"member {self.name!r}: sequence of {longest} tokens exceeds its context of {self.context_length}"
            )
        ids = torch.full((len(batch), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.bool)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[row, : len(seq)] = True
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device).long())
        return out.logits, mask

    def log_probs(self, batch: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Full next-token log-distributions, float32, one ``[len(seq), V]`` tensor per sequence."""
        logits, _ = self.logits(batch)
        out = [self._log_softmax(logits[row, : len(seq)]) for row, seq in enumerate(batch)]
        del logits
        return out

    @torch.inference_mode()
    def rows(self, ids: Sequence[int], window: int | None = None) -> torch.Tensor:
        """``[len(ids), V]`` float32: row ``i`` is the log-distribution of ``ids[i]`` given the prefix token and
        ``ids[:i]`` (rolling windows of at most ``window`` tokens for texts longer than the context)."""
        ids = list(ids)
        if not ids:
            raise InputError(f"member {self.name!r}: nothing to read (empty token list)")
        full = [self.prefix_token_id, *ids]
        out = []
        for lo, start, end in windows(len(ids), min(window or self.context_length, self.context_length)):
            (lp,) = self.log_probs([full[lo:end]])
            out.append(lp[start - lo : end - lo])
        return torch.cat(out)

    @torch.inference_mode()
    def score_tokens(self, ids: Sequence[int], batch_size: int = 8, window: int | None = None) -> torch.Tensor:
        """Log-prob of every token of ``ids`` given the prefix token and all tokens before it.

        Returns float32 ``[len(ids)]``. Texts longer than the context are scored in rolling windows
        (`windows`, as in lm-evaluation-harness's rolling log-likelihood), ``batch_size`` windows per pass,
        so every token is scored exactly once. ``window`` caps the window below the context length.
        """
        ids = list(ids)
        if not ids:
            raise InputError(f"member {self.name!r}: nothing to score (empty token list)")
        full = [self.prefix_token_id, *ids]
        pieces = windows(len(ids), min(window or self.context_length, self.context_length))
        scores: list[torch.Tensor] = []
        for b in range(0, len(pieces), batch_size):
            chunk = pieces[b : b + batch_size]
            logits, _ = self.logits([full[lo:end] for lo, _, end in chunk])
            for row, (lo, start, end) in enumerate(chunk):
                lp = self._log_softmax(logits[row, start - lo : end - lo])
                targets = torch.as_tensor(full[start + 1 : end + 1], dtype=torch.long)
                scores.append(lp.gather(-1, targets[:, None])[:, 0])
            del logits
        return torch.cat(scores)

    # ---- cached decoding ------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward_cached(self, ids: Sequence[int], cache: Any, last_only: bool = False, extend: bool = True) -> torch.Tensor:
        """Feed ``ids`` after what ``cache`` holds; returns ``[len(ids), V]`` float32 log-prob rows (``[1, V]``
        with ``last_only``). ``extend=False`` leaves the cache as it was."""
        before = int(cache.get_seq_length())
        x = torch.as_tensor([list(ids)], dtype=torch.long, device=self.device)
        out = self.model(input_ids=x, cache=cache, use_cache=True, logits_to_keep=1 if last_only else 0)
        if not extend:
            crop_to(cache, before)
        return self._log_softmax(out.logits[0])

    def feed(self, feeds: Sequence[Feed]) -> list[torch.Tensor]:
        """Every feed's ``[len(ids), V]`` float32 rows (row ``i`` predicts the token after ``ids[i]``; ``[1, V]``
        for ``last_only``). One feed runs alone (`forward_cached`); several run as left-padded batches of
        similar lengths (`_feed_batch`), as many rows per pass as ``FEED_LOGITS_BUDGET`` allows."""
        if len(feeds) == 1:
            f = feeds[0]
            return [self.forward_cached(f.ids, f.cache, f.last_only, f.extend)]
        out: list[torch.Tensor | None] = [None] * len(feeds)
        for group in _similar_lengths(feeds, max(1, FEED_LOGITS_BUDGET // self.logits_width)):
            batch = [feeds[j] for j in group]
            rows = self.feed(batch) if len(batch) == 1 else self._feed_batch(batch)
            for j, r in zip(group, rows, strict=True):
                out[j] = r
        return [r for r in out if r is not None]

    @torch.inference_mode()
    def _feed_batch(self, feeds: Sequence[Feed]) -> list[torch.Tensor]:
        """One forward pass over several caches: each row's cache is left-padded to the longest (masked), its
        ids follow right-padded, at its own positions; then each row's new keys and values are appended to
        its own cache. Left padding keeps a row's tokens contiguous, so sliding-window layers see the same
        distances as when the row runs alone."""
        from transformers import DynamicCache

        lengths = [int(f.cache.get_seq_length()) for f in feeds]
        past, width, batch = max(lengths), max(len(f.ids) for f in feeds), len(feeds)
        stacked = None
        if past:
            ref: Any = feeds[lengths.index(past)].cache
            stacked = []
            for layer, ref_layer in enumerate(ref.layers):
                heads, dim = ref_layer.keys.shape[1], ref_layer.keys.shape[3]
                keys = ref_layer.keys.new_zeros((batch, heads, past, dim))
                values = ref_layer.values.new_zeros((batch, heads, past, ref_layer.values.shape[3]))
                for row, f in enumerate(feeds):
                    if lengths[row]:
                        keys[row, :, past - lengths[row]:] = f.cache.layers[layer].keys[0]
                        values[row, :, past - lengths[row]:] = f.cache.layers[layer].values[0]
                stacked.append((keys, values))
        cache: Any = DynamicCache(ddp_cache_data=stacked) if stacked else DynamicCache()
        ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((batch, past + width), dtype=torch.long)
        positions = torch.zeros((batch, width), dtype=torch.long)
        # Full rows: ids right-padded (row i of the output is position i). Last rows only: left-padded, so
        # every sequence ends in the last column, the one position the LM head runs for.
        last_only = feeds[0].last_only
        slots = []
        for row, f in enumerate(feeds):
            n = len(f.ids)
            first = width - n if last_only else 0
            ids[row, first : first + n] = torch.as_tensor(list(f.ids), dtype=torch.long)
            mask[row, past - lengths[row] : past] = 1
            mask[row, past + first : past + first + n] = 1
            positions[row, first : first + n] = lengths[row] + torch.arange(n)
            slots.append((past + first, past + first + n))
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=positions.to(self.device), cache=cache, use_cache=True,
                         logits_to_keep=1 if last_only else 0)
        rows = [self._log_softmax(out.logits[row, -1:] if last_only else out.logits[row, : len(f.ids)])
                for row, f in enumerate(feeds)]
        # Only once every row is finite does any cache grow: a failed batch leaves them all as they were.
        for row, f in enumerate(feeds):
            if not f.extend:
                continue
            lo, hi = slots[row]
            for layer, batched in enumerate(cache.layers):
                f.cache.update(batched.keys[row : row + 1, :, lo:hi].clone(),
                               batched.values[row : row + 1, :, lo:hi].clone(), layer)
        return rows

    # ---- the model's own decoding ----------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, batch: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Sequence[int],
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0) -> list[list[int]]:
        """transformers' ``generate`` over left-padded rows (each already starting with its prefix token): the
        new token ids of each row, ``[B][<= max_new_tokens]``, up to and including a stop id. Greedy unless
        ``do_sample`` (then nucleus sampling from the global torch RNG, ``top_k`` off)."""
        longest = max(len(s) for s in batch)
        pad = self.pad_token_id
        ids = torch.full((len(batch), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for r, seq in enumerate(batch):
            ids[r, longest - len(seq):] = torch.as_tensor(list(seq))
            mask[r, longest - len(seq):] = 1
        kwargs: dict[str, Any] = {"do_sample": do_sample, "max_new_tokens": max_new_tokens,
                                  "eos_token_id": list(stop_ids), "pad_token_id": pad}
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        else:  # unset the model's own sampling defaults: greedy is greedy
            kwargs.update(temperature=None, top_p=None, top_k=None)
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs)
        return [row.tolist() for row in out[:, longest:].cpu()]

    def _log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(logits.float(), dim=-1)
        check_finite(lp, self.name)
        return lp.cpu()


def _similar_lengths(feeds: Sequence[Feed], max_rows: int) -> list[list[int]]:
    """Indices of ``feeds`` in groups that pad little: the same ``last_only``, by length, a group's longest at
    most twice its shortest plus 8 tokens, and at most ``max_rows`` logit rows per group."""
    order = sorted(range(len(feeds)), key=lambda j: (feeds[j].last_only, len(feeds[j].ids)))
    groups: list[list[int]] = []
    for j in order:
        n = len(feeds[j].ids)
        if groups:
            group = groups[-1]
            shortest, same = len(feeds[group[0]].ids), feeds[group[0]].last_only == feeds[j].last_only
            rows = len(group) + 1 if feeds[j].last_only else (len(group) + 1) * n
            if same and n <= 2 * shortest + 8 and rows <= max_rows:
                group.append(j)
                continue
        groups.append([j])
    return groups


def check_finite(log_probs: torch.Tensor, name: str) -> None:
    """Raise a clear error when a model produced NaN or +inf logits (``-inf`` log-probs are legitimate)."""
    bad = torch.isnan(log_probs) | torch.isposinf(log_probs)
    if bool(bad.any()):
        where = torch.nonzero(bad)[0].tolist()
        raise NumericalError(
            f"member {name!r} produced NaN/inf log-probabilities (first at index {where}); "
            "try dtype=float32 or check the model weights"
        )
