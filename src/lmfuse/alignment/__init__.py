"""Cross-tokenizer alignment: token surfaces, vocabulary maps, distribution projection, sequence alignment.

Pure: numpy, torch and rapidfuzz only (no transformers import); the only I/O is the on-disk vocabulary-map cache.
See docs/alignment.md for the rules (byte tokens, specials, tie-breaking, position semantics).
"""

from lmfuse.alignment.prefix import SurfaceIndex, prefix_map, surface_index
from lmfuse.alignment.project import project_logprobs, project_topk, unmapped_mass
from lmfuse.alignment.sequence import SequenceAlignment, align_dtw, align_offsets
from lmfuse.alignment.tokens import BYTE, NORMAL, SPECIAL, UNUSED, TokenTable, surfaces_of, token_table
from lmfuse.alignment.vocab import METHODS, VocabMap, build_vocab_map, identity_map

__all__ = [
    "BYTE",
    "METHODS",
    "NORMAL",
    "SPECIAL",
    "UNUSED",
    "SequenceAlignment",
    "SurfaceIndex",
    "TokenTable",
    "VocabMap",
    "align_dtw",
    "align_offsets",
    "build_vocab_map",
    "identity_map",
    "prefix_map",
    "project_logprobs",
    "project_topk",
    "surface_index",
    "surfaces_of",
    "token_table",
    "unmapped_mass",
]
