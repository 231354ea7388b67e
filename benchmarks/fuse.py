"""FuseLLM pipeline benchmark: storage per token, extraction vs plain forward, alignment, and training steps.

Run from the repository root (CPU is fine; keep it small on shared machines)::

    python benchmarks/fuse.py --member toy --rows 32                 # tiny in-process models
    python benchmarks/fuse.py --member smollm2 --source qwen-coder --rows 16 --max-chars 1000

Prints one table per measurement, each side by side with its baseline from the same run:

* storage: bytes per token per source on disk, the whole file over its tokens, and per array (goal <= 60 B
  at k = 10; the reference format is ~173 B). Run it once per source (``--member qwen-coder``, ...): ids take
  2 bytes below 65,535 vocabulary entries, else 3;
* extraction: tokens/s of ``extract_rows`` vs a plain forward over the same batches (goal >= 0.9x);
* alignment: target tokens/s of ``align_shard`` (source -> target, offsets + MinED map);
* training: step time and peak memory with the sparse fusion loss vs the plain causal-LM step vs the
  reference's dense V-wide soft-label loss (each variant in a fresh process; peak RSS above the
  process's baseline after loading the model). Step time is reported as wall time and as the process's
  CPU time: on a shared machine with ``OMP_NUM_THREADS=1`` the CPU time is the figure that other jobs
  do not distort.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lmfuse.fuse import store
from lmfuse.fuse.corpus import chunk_text
from lmfuse.fuse.extract import extract_rows
from lmfuse.fuse.members import resolve_member
from lmfuse.fuse.recipe import MemberSpec
from lmfuse.fuse.transfer import Aligner, align_shard
from lmfuse.models.member import Member

TOY = {"toy": "toy:sentencepiece:llama:0", "toy-src": "toy:bytebpe:gpt2:1"}


def load(name: str) -> Member:
    return resolve_member(MemberSpec(TOY.get(name, name), name=name.replace(":", "-")))


def corpus(rows: int, max_chars: int) -> list[str]:
    """Stdlib Python source and some prose (always on disk), cut into rows."""
    import inspect
    import textwrap

    from lmfuse.models.toy import toy_corpus

    text = toy_corpus() + inspect.getsource(textwrap) + inspect.getsource(argparse)
    out = [c for c in chunk_text(text, max_chars) if c.strip()]
    return out[:rows]


def bench_extract(member: Member, rows: list[str], top_k: int, batch_size: int) -> dict[str, float]:
    encs = [member.encode(t) for t in rows]
    batches = [[[member.prefix_token_id, *e.ids] for e in encs[i : i + batch_size]]
               for i in range(0, len(encs), batch_size)]
    n_tokens = sum(len(e.ids) for e in encs)
    extract_rows(member, rows[:batch_size], top_k=top_k, batch_size=batch_size)  # warm-up
    t = time.perf_counter()
    for b in batches:
        member.logits(b)
    plain = time.perf_counter() - t
    t = time.perf_counter()
    shard = extract_rows(member, rows, top_k=top_k, batch_size=batch_size)
    extract = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.safetensors"
        store.write_shard(path, shard)
        size = path.stat().st_size
    # Bytes per token of each per-token array as written (3-byte ids where the vocabulary needs > 16 bits).
    tensors, _ = store.encode_shard(shard)
    per_token = {k[4:]: v.nbytes / shard.num_tokens for k, v in tensors.items() if k.startswith("tok/")}
    ids_on_disk = tensors["tok/topk_ids"]
    id_bytes = ids_on_disk.shape[-1] if ids_on_disk.dtype == np.uint8 else ids_on_disk.itemsize
    return {"tokens": n_tokens, "plain_tok_s": n_tokens / plain, "extract_tok_s": n_tokens / extract,
            "ratio": plain / extract, "bytes_per_token": size / shard.num_tokens,
            "id_bytes_on_disk": id_bytes, "width": member.logits_width,
            **{f"B/tok {k}": v for k, v in per_token.items()}}


def bench_align(src: Member, tgt: Member, rows: list[str], top_k: int) -> dict[str, float]:
    s = extract_rows(src, rows, top_k=top_k)
    t = extract_rows(tgt, rows, top_k=top_k)
    started = time.perf_counter()
    aligner = Aligner(src.tokenizer, tgt.tokenizer, src.logits_width, tgt.logits_width)
    vmap_s = time.perf_counter() - started
    started = time.perf_counter()
    out = align_shard(s, t, rows, aligner, tgt.logits_width, "one-hot")
    dt = time.perf_counter() - started
    return {"target_tokens": out.num_tokens, "align_tok_s": out.num_tokens / dt, "vocab_map_s": vmap_s,
            "aligned_share": float(out.tokens["aligned"].mean())}


def train_variant(spec: str, variant: str, seq: int, batch: int, steps: int, k: int) -> dict[str, float]:
    """One training variant, measured inside this (fresh) process."""
    from lmfuse.fuse.losses import dense_soft_ce, densify, fuse_loss

    member = load(spec)
    model = member.model.float().train()
    V = member.logits_width
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(V, len(member.tokenizer)), (batch, seq), generator=g)
    labels = torch.randint(0, min(V, len(member.tokenizer)), (batch, seq), generator=g)
    t_ids = torch.randint(0, V, (batch, seq, k), generator=g)
    t_lp = torch.log_softmax(torch.randn(batch, seq, k, generator=g), -1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu = [], []
    for _ in range(steps + 1):
        t, c = time.perf_counter(), time.process_time()
        logits = model(input_ids=ids).logits
        if variant == "clm":
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, V), labels.reshape(-1))
        elif variant == "sparse":
            loss = fuse_loss(logits, labels, t_ids, t_lp, lm_weight=0.9).total
        else:  # the reference: a dense [B, T, V] teacher per batch, then a dense soft-label CE
            dense = densify(t_ids, t_lp, V)
            clm = torch.nn.functional.cross_entropy(logits.float().reshape(-1, V), labels.reshape(-1))
            loss = 0.9 * clm + 0.1 * dense_soft_ce(logits, dense, torch.ones(batch, seq))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"step_s": float(np.median(times[1:])), "cpu_s": float(np.median(cpu[1:])),
            "peak_extra_mib": (peak - base) / 1024}


def bench_train(spec: str, seq: int, batch: int, steps: int, k: int) -> dict[str, dict[str, float]]:
    out = {}
    for variant in ("clm", "sparse", "dense"):
        cmd = [sys.executable, __file__, "--_train-variant", variant, "--member", spec, "--seq", str(seq),
               "--batch", str(batch), "--steps", str(steps), "--top-k", str(k)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
        out[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--member", default="toy", help="target: toy, a zoo name, or a model path")
    p.add_argument("--source", default="toy-src", help="source for the alignment benchmark")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--max-chars", type=int, default=600)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq", type=int, default=256, help="training benchmark: tokens per row")
    p.add_argument("--batch", type=int, default=2, help="training benchmark: rows per step")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--skip", default="", help="comma-separated parts to skip: extract,align,train")
    p.add_argument("--_train-variant", dest="variant", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(train_variant(args.member, args.variant, args.seq, args.batch, args.steps, args.top_k)))
        return
    skip = set(args.skip.split(","))
    torch.manual_seed(0)
    rows = corpus(args.rows, args.max_chars)
    print(f"torch threads {torch.get_num_threads()}, {len(rows)} rows of <= {args.max_chars} chars, k={args.top_k}")
    target = load(args.member)
    if "extract" not in skip:
        r = bench_extract(target, rows, args.top_k, args.batch_size)
        print("\n## storage and extraction:", args.member)
        for key, value in r.items():
            print(f"  {key:24s} {value:.3f}" if isinstance(value, float) else f"  {key:24s} {value}")
    if "align" not in skip:
        src = load(args.source)
        r = bench_align(src, target, rows, args.top_k)
        print(f"\n## alignment: {args.source} -> {args.member}")
        for key, value in r.items():
            print(f"  {key:24s} {value:.3f}" if isinstance(value, float) else f"  {key:24s} {value}")
    if "train" not in skip:
        res = bench_train(args.member, args.seq, args.batch, args.steps, args.top_k)
        print(f"\n## training step: {args.member}, batch {args.batch} x {args.seq} tokens, V={target.logits_width}")
        print(f"  {'variant':8s} {'step s':>8s} {'x clm':>6s} {'CPU s':>8s} {'x clm':>6s} {'peak MiB':>9s} {'x clm':>6s}")
        for variant, m in res.items():
            base_mem = res["clm"]["peak_extra_mib"]
            mem_ratio = f"{m['peak_extra_mib'] / base_mem:6.2f}" if base_mem >= 1.0 else "     -"
            print(f"  {variant:8s} {m['step_s']:8.3f} {m['step_s'] / res['clm']['step_s']:6.2f} "
                  f"{m['cpu_s']:8.3f} {m['cpu_s'] / res['clm']['cpu_s']:6.2f} {m['peak_extra_mib']:9.1f} {mem_ratio}")
        print(json.dumps({"train": res}))


if __name__ == "__main__":
    main()
