"""Which member position predicts which seed token, across tokenizations of the same text. Pure.

The fused distribution lives at the seed's token boundaries. Member m contributes to the prediction of
seed token j (character span ``[s_j, e_j)``) exactly when one of m's own tokens *starts* at ``s_j`` and
does not end before ``e_j``: its distribution for that token is then conditioned on the same text
``text[:s_j]`` as the seed's, and can speak for the seed's token. Where ``s_j`` falls inside one of m's
tokens, m has no distribution conditioned on that prefix (its tokens straddle it); where m's token is a
strict prefix of the seed's, m never produces the seed's token. In both cases m abstains and the
weights are renormalised over the members present (the seed is always present). With equal tokenizers
every member is present everywhere.

A token's start is taken after any leading whitespace in its span: byte-level BPE puts the space inside
``" the"`` while WordPiece drops it and starts ``"the"`` one character later; both predict the same word.
"""

from __future__ import annotations

from collections.abc import Sequence


def content_start(text: str, span: tuple[int, int]) -> int:
    """First non-whitespace character of ``text[a:b]`` (``a`` for an all-whitespace token)."""
    a, b = span
    i = a
    while i < b and text[i].isspace():
        i += 1
    return a if i == b else i


def boundary_index(
    text: str, seed_offsets: Sequence[tuple[int, int]], member_offsets: Sequence[tuple[int, int]]
) -> list[int]:
    """For each seed token, the index of the member token starting at the same character and reaching at
    least to the seed token's end, else -1.

    Offsets index ``text``. Zero-width member tokens (some tokenizers emit them) never match. A member
    token that ends first (``":"`` where the seed reads ``":\n"``) is a prefix of the seed token: the
    member puts its mass on that prefix and almost none on the seed token, which it never produces, so in
    a product fusion it would veto the seed's token (−26 nats per ``":\n"`` on Python source). It
    abstains there instead. A longer member token is fine: the projection gives its mass to its longest
    seed-vocabulary prefix.
    """
    starts: dict[int, tuple[int, int]] = {}
    for i, (a, b) in enumerate(member_offsets):
        if b > a:
            starts.setdefault(content_start(text, (a, b)), (i, b))
    out = []
    for span in seed_offsets:
        hit = starts.get(content_start(text, span)) if span[1] > span[0] else None
        out.append(hit[0] if hit is not None and hit[1] >= span[1] else -1)
    return out


def shift(offsets: Sequence[tuple[int, int]], by: int) -> list[tuple[int, int]]:
    return [(a + by, b + by) for a, b in offsets]
