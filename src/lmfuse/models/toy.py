"""Tiny tokenizers and models built in-process, for tests, examples and benchmarks (no downloads).

Three tokenizer families, each a real ``tokenizers`` pipeline trained on a few KB of text:

* ``bytebpe``   — byte-level BPE (GPT-2/Llama-3/Qwen style: ``Ġ`` for space, ``Ċ`` for newline)
* ``sentencepiece`` — SentencePiece-style BPE (``▁`` for space) with ``<0xNN>`` byte fallback (Llama-2/Gemma style)
* ``wordpiece`` — BERT-style WordPiece (``##`` continuation), lossy on whitespace

and tiny random Llama / GPT-2 models whose logits can be wider than the tokenizer (as Qwen's are).
"""

from __future__ import annotations

import inspect
import textwrap
from typing import Any

import torch

from lmfuse.errors import InputError
from lmfuse.models.member import Member
from lmfuse.registry import suggest

FAMILIES = ("bytebpe", "sentencepiece", "wordpiece")

_EXTRA_TEXT = """\
The quick brown fox jumps over the lazy dog. To be, or not to be: that is the question.
Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune.
Numbers: 0 1 2 3 42 3.14159 1,000,000 and dates like 2024-01-31.
Unicode: café naïve Zürich — “quotes” ‘single’ … 東京 北京 你好 世界 こんにちは 🙂 🚀
def add(a, b):
\treturn a + b

class Stack:
    def __init__(self):
        self.items = []
"""


def toy_corpus() -> str:
    """A few KB of mixed prose, code, digits and multi-byte characters (stdlib source is on every machine)."""
    return _EXTRA_TEXT + inspect.getsource(textwrap)[:6000]


def _bos_eos(family: str) -> tuple[str, str, str, str]:
    if family == "wordpiece":
        return "[CLS]", "[SEP]", "[PAD]", "[UNK]"
    if family == "sentencepiece":
        return "<s>", "</s>", "<pad>", "<unk>"
    return "<|bos|>", "<|endoftext|>", "<|pad|>", "<|unk|>"


def build_tokenizer(family: str, vocab_size: int = 400, text: str | None = None) -> Any:
    """Train a tiny fast tokenizer of one family; returns a ``transformers.PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = (text or toy_corpus()).splitlines(keepends=True)
    bos, eos, pad, unk = _bos_eos(family)
    specials = [pad, bos, eos, unk]
    if family == "bytebpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        tok.train_from_iterator(corpus, trainer)
    elif family == "sentencepiece":
        tok = _train_sentencepiece_style(corpus, vocab_size, specials)
    elif family == "wordpiece":
        tok = _train_wordpiece(corpus, vocab_size, specials)
    else:
        raise InputError(suggest(family, list(FAMILIES), "toy tokenizer family"))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk
    )


def _train_wordpiece(corpus: list[str], vocab_size: int, specials: list[str]) -> Any:
    """BERT-style WordPiece whose pieces are learnt by BPE over the same words.

    tokenizers' ``WordPieceTrainer`` (0.23) is not deterministic across processes: ties are broken in
    hash-map order, so two processes built different vocabularies from the same text. A toy member must
    be rebuilt identically from its spec in every process (multi-process and resumed fuse runs), and
    the plain BPE trainer over BERT-pre-tokenized words is deterministic. Each learnt piece ``p`` enters
    the vocabulary twice, as a word start ``p`` and as a continuation ``##p``, so every word of the
    corpus has a WordPiece segmentation.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    base = Tokenizer(models.BPE())
    base.normalizer = normalizers.NFC()
    base.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.BpeTrainer(vocab_size=(vocab_size + len(specials)) // 2, special_tokens=specials,
                                  show_progress=False, limit_alphabet=200)
    base.train_from_iterator(corpus, trainer)
    pieces = [t for t, _ in sorted(base.get_vocab().items(), key=lambda kv: kv[1]) if t not in specials]
    vocab = {t: i for i, t in enumerate([*specials, *pieces, *(f"##{p}" for p in pieces)])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=specials[3]))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return tok


def _train_sentencepiece_style(corpus: list[str], vocab_size: int, specials: list[str]) -> Any:
    """BPE over ``▁``-marked words with all 256 ``<0xNN>`` byte tokens, as Llama-2's tokenizer.json has."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    base = Tokenizer(models.BPE())
    base.normalizer = normalizers.Replace(" ", "▁")
    base.pre_tokenizer = pre_tokenizers.Split(Regex("▁?[^▁]+|▁+"), behavior="isolated")
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  limit_alphabet=200)
    base.train_from_iterator(corpus, trainer)
    # Keep only ASCII pieces, so newlines, accents, CJK and emoji go through the byte fallback
    # (``\n`` -> ``<0x0A>``), as they do for many characters in Llama-2 and Gemma.
    def ascii_piece(piece: str) -> bool:
        return all(c == "▁" or (" " < c < "\x7f") for c in piece)

    learned = {t: i for t, i in base.get_vocab().items() if ascii_piece(t)}
    vocab = {t: i for i, t in enumerate(specials)}
    for t in byte_tokens:
        vocab[t] = len(vocab)
    for t, _ in sorted(learned.items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    import json

    merges = [
        (a, b) for a, b in (m.split(" ", 1) if isinstance(m, str) else m
                            for m in json.loads(base.to_str())["model"]["merges"])
        if a + b in vocab and a in vocab and b in vocab
    ]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=specials[3], byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("▁?[^▁]+|▁+"), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return tok


def build_model(arch: str, vocab_size: int, seed: int = 0, pad_to: int = 1, context: int = 256) -> Any:
    """A tiny random causal LM (``llama`` or ``gpt2``); the logits are padded up to a multiple of ``pad_to``."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    width = -(-vocab_size // pad_to) * pad_to
    torch.manual_seed(seed)
    model: Any
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=width, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=context, tie_word_embeddings=False,
        ))
    elif arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=width, n_embd=32, n_layer=2, n_head=4, n_positions=context))
    else:
        raise InputError(suggest(arch, ["llama", "gpt2"], "toy architecture"))
    model.eval()
    return model


def toy_member(family: str, arch: str = "llama", seed: int = 0, pad_to: int = 1, vocab_size: int = 400,
               context: int = 256) -> Member:
    """A ready ``Member``: tiny tokenizer of ``family`` plus a tiny random ``arch`` model."""
    tok = build_tokenizer(family, vocab_size=vocab_size)
    model = build_model(arch, len(tok), seed=seed, pad_to=pad_to, context=context)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.config, key, getattr(tok, key))
    return Member(name=f"toy-{family}-{arch}", tokenizer=tok, model=model, source="toy")
