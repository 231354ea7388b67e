"""``lmfuse align inspect A B``: a pre-flight report on how well two tokenizers can be fused.

A and B are member specs as ``lmfuse.models.load.locate`` resolves them (a zoo name, a HF directory, a ``.gguf``
file), but only the tokenizers are loaded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lmfuse.errors import InputError

SAMPLE_TEXT = """\
The quick brown fox jumps over the lazy dog. "Is it 3.14 or 22/7?" she asked — twice.
def fibonacci(n: int) -> int:
    \"\"\"Return the n-th Fibonacci number.\"\"\"
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a

Unicode: café, naïve, Zürich, 東京, 你好世界, こんにちは, Привет, 🙂🚀.
To be, or not to be, that is the question:\tWhether 'tis nobler in the mind to suffer
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("align", help="inspect how two tokenizers align before fusing them")
    sub = parser.add_subparsers(dest="align_command", metavar="ACTION", required=True)
    inspect = sub.add_parser("inspect", help="vocabulary coverage, special/byte tokens, sequence-alignment stats")
    inspect.add_argument("a", help="first member: zoo name, HF directory or .gguf file")
    inspect.add_argument("b", help="second member: zoo name, HF directory or .gguf file")
    inspect.add_argument("--text", type=Path, help="sample text file for the sequence statistics "
                         "(default: a built-in mix of prose, code and Unicode)")
    inspect.add_argument("--worst", type=int, default=8, help="how many worst mappings to show (default 8)")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.add_argument("--no-cache", action="store_true", help="rebuild the vocabulary maps")
    inspect.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmfuse.alignment import build_vocab_map, token_table
    from lmfuse.alignment.report import as_dict, format_report, sequence_report, vocab_report
    from lmfuse.models.load import load_tokenizer, locate

    if args.text is not None:
        if not args.text.is_file():
            raise InputError(f"--text {str(args.text)!r} is not a file")
        try:
            text = args.text.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"--text {str(args.text)!r} is not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset "
                             f"{exc.start})") from None
    else:
        text = SAMPLE_TEXT
    if not text.strip():
        raise InputError("the sample text is empty")
    locate(args.a), locate(args.b)  # fail fast on a bad name, before loading either tokenizer
    tok_a, tok_b = load_tokenizer(args.a), load_tokenizer(args.b)
    a, b = token_table(tok_a, name=args.a), token_table(tok_b, name=args.b)
    cache = not args.no_cache
    maps = {(x, y, m): build_vocab_map(s, t, m, cache=cache)
            for x, y, s, t in (("a", "b", a, b), ("b", "a", b, a)) for m in ("exact", "mined")}
    ab = vocab_report(a, b, maps["a", "b", "exact"], maps["a", "b", "mined"], args.worst)
    ba = vocab_report(b, a, maps["b", "a", "exact"], maps["b", "a", "mined"], args.worst)
    ea = tok_a(text, add_special_tokens=False, return_offsets_mapping=True)
    eb = tok_b(text, add_special_tokens=False, return_offsets_mapping=True)
    seq = sequence_report(ea["input_ids"], ea["offset_mapping"], eb["input_ids"], eb["offset_mapping"], a, b)
    if args.json:
        print(json.dumps({"a": args.a, "b": args.b, "a_to_b": as_dict(ab), "b_to_a": as_dict(ba),
                          "sequence": as_dict(seq)}, indent=2, ensure_ascii=False))
    else:
        print(format_report(args.a, args.b, ab, ba, seq))
    return 0
