"""A member's readings of a text the pack needs: full next-token rows of a text, and continuations after a context.

Row convention (as in ``Member``): a member reads ``[prefix] + ids``; row ``i`` of the returned
``[len(ids), V]`` float32 tensor is the log-distribution of ``ids[i]`` given the prefix token and
``ids[:i]``. Texts longer than the member's context are read in rolling windows (each window conditions
on up to ``context_length - 1`` earlier tokens), so every token gets exactly one row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmfuse.errors import InputError
from lmfuse.models.member import Member, crop_to, new_cache


@dataclass
class TextRun:
    """One member's reading of one text: its tokens, their character spans and log-prob rows."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    rows: torch.Tensor  # [len(ids), V] float32

    @property
    def token_logprobs(self) -> torch.Tensor:
        """``[len(ids)]`` log-prob of each token."""
        return self.rows.gather(-1, torch.as_tensor(self.ids, dtype=torch.long)[:, None])[:, 0]


def read_text(member: Member, text: str, window: int | None = None) -> TextRun:
    """Tokenize ``text`` in the member's own tokenization and compute every row (rolling if long)."""
    enc = member.encode(text)
    if not enc.ids:
        raise InputError(f"member {member.name!r}: text {text[:40]!r} has no tokens")
    return TextRun(enc.ids, enc.offsets, member.rows(enc.ids, window))


@torch.inference_mode()
def read_with_continuations(
    member: Member, context: str, continuations: Sequence[str], reuse_prefix: bool = True
) -> tuple[TextRun, list[TextRun]]:
    """Rows of ``context`` and of each continuation given it, the context computed once (KV cache).

    Context and continuation are tokenized separately (the boundary is a token boundary for every
    member, as lm-evaluation-harness does). A continuation run's row ``i`` predicts its token ``i``;
    row 0 comes from the context's last position. With ``reuse_prefix=False`` every continuation
    re-reads the whole context (the baseline the benchmark compares against).
    """
    ctx = member.encode(context)
    conts = [member.encode(c) for c in continuations]
    for text, enc in zip(continuations, conts, strict=True):
        if not enc.ids:
            raise InputError(f"member {member.name!r}: continuation {text!r} has no tokens")
    limit = member.context_length
    longest = max(len(c.ids) for c in conts)
    keep = limit - 1 - longest
    if keep < 0:
        raise InputError(f"member {member.name!r}: a continuation of {longest} tokens exceeds its context of {limit}")
    # Long contexts keep their last tokens (left truncation), so context + continuation fits.
    ctx_ids, ctx_off = ctx.ids[-keep:] if keep else [], ctx.offsets[-keep:] if keep else []
    cache = new_cache()
    head = member.forward_cached([member.prefix_token_id, *ctx_ids], cache)  # [1 + n_ctx, V]
    ctx_run = TextRun(ctx_ids, ctx_off, head[:-1])
    runs = []
    base = len(ctx_ids) + 1
    for enc in conts:
        rows = [head[-1:]]
        if len(enc.ids) > 1:
            if reuse_prefix:
                rows.append(member.forward_cached(enc.ids[:-1], cache))
                crop_to(cache, base)
            else:
                rows.append(member.forward_cached([member.prefix_token_id, *ctx_ids, *enc.ids[:-1]],
                                                  new_cache())[base:])
        runs.append(TextRun(enc.ids, enc.offsets, torch.cat(rows)))
    return ctx_run, runs
