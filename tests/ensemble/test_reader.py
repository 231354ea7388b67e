"""The reader's invariants (`lmfuse.ensemble.reader`), checked after every step of batched decodings."""

from __future__ import annotations

import torch

from lmfuse.ensemble import Pack
from lmfuse.ensemble.generate import Decoder, Decoding
from lmfuse.ensemble.reader import Reader
from lmfuse.models.member import Member

PROMPTS = ["The quick brown fox", "def add(a, b):\n    return", "Numbers: 0 1 2 3 42, then", "日本語の文章 is"]


def check(reader: Reader, written: bytes) -> None:
    member, base = reader.member, len(reader.head)
    # 1. the cache holds exactly ids, which start with the head
    assert reader.cache.get_seq_length() == len(reader.ids)
    assert reader.ids[:base] == reader.head
    # 2. rows_at[p] is the row after ids[:p]; row is the last one; only boundaries at or after the head
    assert torch.equal(reader.rows_at[len(reader.ids)], reader.row)
    assert all(p >= base for p in reader.rows_at)
    (whole,) = member.log_probs([reader.ids])  # whole[i] predicts ids[i + 1]
    for p, row in reader.rows_at.items():
        if p < len(reader.ids):
            assert torch.allclose(row, whole[p - 1], atol=1e-4), p
    # 3. log_before and ends follow the generated tokens
    generated = reader.ids[base:]
    assert len(reader.log_before) == len(reader.ends) == len(generated) + 1
    surfaces = reader.lexicon.surfaces
    for j, t in enumerate(generated):
        assert reader.ends[j + 1] == reader.ends[j] + len(surfaces[t])
        p = base + j
        lp = float(whole[p - 1][t])
        assert abs(reader.log_before[j + 1] - reader.log_before[j] - lp) < 1e-3
    # 4. the generated ids spell the written text, a last token read ahead running past its end
    spelled = b"".join(surfaces[t] for t in generated)
    inside = b"".join(surfaces[t] for t in generated[:-1])
    assert written.startswith(inside) and (written.startswith(spelled) or spelled.startswith(written))
    # 5. dead offsets stay dead
    for start in reader.dead:
        assert not reader.lexicon.sorted.reaches(written, start, len(written))


def test_reader_invariants_hold_after_every_step(toy_members: dict[str, Member]) -> None:
    a, b, c = toy_members["bytebpe"], toy_members["sentencepiece"], toy_members["wordpiece"]
    for members, weights in (([b, a], [0.5, 0.5]), ([a, b], [0.3, 0.7]), ([a, b, c], [0.4, 0.3, 0.3])):
        pack = Pack(members, weighting="fixed", weights=weights, seed_member=members[0].name)
        decoder = Decoder(pack)
        decodings = [Decoding(pack, p, max_new_tokens=10) for p in PROMPTS]
        for d in decodings:
            decoder.add(d)
        checked = 0
        while decoder.live:
            read = {id(d): d.reading for d in decodings}  # what this round's readers read
            decoder.step()
            for d in decodings:
                if d.done or d.n_tokens == 0:
                    continue
                for reader in d.readers.values():
                    if reader.maps is not None:
                        check(reader, read[id(d)])
                        checked += 1
        assert checked > 20
