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
from lmfuse.models.member import Encoding, Feed, Member, new_cache


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


Example = tuple[str, Sequence[str]]  # a context and its continuations (the options of one question)


def read_examples(member: Member, examples: Sequence[Example],
                  reuse_prefix: bool = True) -> list[tuple[TextRun, list[TextRun]]]:
    """Per example: the member's rows of the context, and of each continuation given it.

    Context and continuation are tokenized separately (the boundary is a token boundary for every
    member, as lm-evaluation-harness does). A continuation run's row ``i`` predicts its token ``i``;
    row 0 comes from the context's last position. The contexts of all examples are read in one batched
    pass (their KV caches kept), then every continuation after its context in one more (the caches are
    read, not grown). With ``reuse_prefix=False`` every continuation re-reads the whole context (the
    baseline the benchmark compares against).
    """
    encoded = [_encode_example(member, context, continuations) for context, continuations in examples]
    rows = read_ids(member, [(ctx_ids, [c.ids for c in conts]) for ctx_ids, _, conts in encoded], reuse_prefix)
    return [(TextRun(ctx_ids, ctx_off, ctx_rows), [TextRun(c.ids, c.offsets, r) for c, r in zip(conts, cont_rows, strict=True)])
            for (ctx_ids, ctx_off, conts), (ctx_rows, cont_rows) in zip(encoded, rows, strict=True)]


IdExample = tuple[Sequence[int], Sequence[Sequence[int]]]  # context ids and each continuation's ids


def read_ids(member: Member, examples: Sequence[IdExample],
             reuse_prefix: bool = True) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """`read_examples` on given token ids (they must fit the member's context): per example, the rows of
    the context ``[n_ctx, V]`` (row ``i`` predicts context id ``i``) and of each continuation ``[n_cont, V]``
    (row 0 from the context's last position). Each continuation must have at least one id."""
    caches = [new_cache() for _ in examples]
    heads = member.feed([Feed(cache, [member.prefix_token_id, *ctx_ids])  # [1 + n_ctx, V] each
                         for cache, (ctx_ids, _) in zip(caches, examples, strict=True)])
    reads = [(e, o) for e, (_, conts) in enumerate(examples) for o, ids in enumerate(conts) if len(ids) > 1]
    if reuse_prefix:
        feeds = [Feed(caches[e], list(examples[e][1][o])[:-1], extend=False) for e, o in reads]
    else:
        feeds = [Feed(new_cache(), [member.prefix_token_id, *examples[e][0], *list(examples[e][1][o])[:-1]])
                 for e, o in reads]
    rows = dict(zip(reads, member.feed(feeds), strict=True))
    out = []
    for e, ((ctx_ids, conts), head) in enumerate(zip(examples, heads, strict=True)):
        base = len(ctx_ids) + 1
        runs = []
        for o in range(len(conts)):
            after = rows.get((e, o))
            if after is not None and not reuse_prefix:
                after = after[base:]
            runs.append(torch.cat([head[-1:]] if after is None else [head[-1:], after]))
        out.append((head[:-1], runs))
    return out


def _encode_example(member: Member, context: str, continuations: Sequence[str]) -> tuple[
        list[int], list[tuple[int, int]], list[Encoding]]:
    """The context's ids and offsets (left-truncated so context + the longest continuation fit) and each
    continuation's encoding."""
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
    return (ctx.ids[-keep:] if keep else [], ctx.offsets[-keep:] if keep else [], conts)
