"""`PackVocab`: the vocabulary state of a pack, built lazily once per member (or member pair) and shared by
fitting, scoring and decoding.

* per member: its token table (surface bytes and kinds), its text tokens in sorted order (`SortedVocab`,
  what prefix covering walks) and its `Lexicon` (what decoding votes look up);
* per pair: whether two members share a vocabulary (then they share token ids and a token stream), and
  the `LeadMaps` from a member to the lead it votes for while decoding;
* ``read_bytes``: a member's exact next-byte distributions over a span of a text, from its own reading
  of it (`lmfuse.ensemble.bytelevel`): what the weight fit and scoring fuse.

Nothing is projected from one vocabulary into another: members meet over bytes (scoring) or over the text
the lead writes (decoding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmfuse.ensemble.bytelevel import ByteReading, SortedVocab, next_byte_logprobs
from lmfuse.ensemble.runs import TextRun
from lmfuse.ensemble.votes import LeadMaps, Lexicon
from lmfuse.models.member import Member


class PackVocab:
    """Lazily built vocabulary tables of ``members`` (by index)."""

    def __init__(self, members: Sequence[Member]) -> None:
        self.members = list(members)
        self._same: dict[tuple[int, int], bool] = {}
        self._tables: dict[int, Any] = {}
        self._sorted: dict[int, SortedVocab] = {}
        self._lexicons: dict[int, Lexicon] = {}
        self._lead_maps: dict[tuple[int, int], LeadMaps] = {}

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

    def table(self, k: int) -> Any:
        """Member k's `lmfuse.alignment.TokenTable` (surface bytes and kind of every id)."""
        if k not in self._tables:
            from lmfuse.alignment import token_table

            self._tables[k] = token_table(self.members[k].tokenizer)
        return self._tables[k]

    def sorted_vocab(self, k: int) -> SortedVocab:
        """Member k's text tokens in lexicographic order of their surfaces (`lmfuse.ensemble.bytelevel`)."""
        if k not in self._sorted:
            self._sorted[k] = SortedVocab.of(self.table(k), self.members[k].logits_width)
        return self._sorted[k]

    def lexicon(self, k: int) -> Lexicon:
        """Member k's vocabulary as decoding votes read it (sorted surfaces, longest-prefix lookups)."""
        if k not in self._lexicons:
            from lmfuse.alignment import surface_index

            table, width = self.table(k), self.members[k].logits_width
            eos = self.members[k].tokenizer.eos_token_id
            self._lexicons[k] = Lexicon(self.sorted_vocab(k), surface_index(table, width), table.surface, width,
                                        None if eos is None else int(eos))
        return self._lexicons[k]

    def lead_maps(self, k: int, lead: int) -> LeadMaps:
        """Member k <-> lead vocabulary relations for k's votes while the lead decodes."""
        if (k, lead) not in self._lead_maps:
            self._lead_maps[(k, lead)] = LeadMaps.of(self.lexicon(k), self.lexicon(lead))
        return self._lead_maps[(k, lead)]

    def read_bytes(self, k: int, run: TextRun, text: str, span: tuple[int, int], ends_text: bool = True) -> ByteReading:
        """Member k's exact next-byte distributions at bytes ``span`` of ``text``, from its own ``run``
        of the text (the same forward pass that scores it alone); ``ends_text``: a token ends at the span's
        end (`lmfuse.ensemble.bytelevel.next_byte_logprobs`'s ``boundary_at_end``)."""
        table = self.table(k)
        first = len(text[: run.offsets[0][0]].encode("utf-8")) if run.offsets else 0
        return next_byte_logprobs(self.sorted_vocab(k), run.rows, run.ids, [table.surface[i] for i in run.ids],
                                  text.encode("utf-8"), first, span, boundary_at_end=ends_text)
