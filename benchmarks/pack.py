"""Benchmark the pack on real members: decoding speed, weight-fit share, scoring throughput, memory.

    python benchmarks/pack.py                       # the installed default-pack members
    python benchmarks/pack.py --members smollm2,gemma3 --tokens 16 --parts batch --batch-sizes 1,8

Generation fidelity has its own benchmark: benchmarks/generation.py.

Prints one table per part with the baseline measured in the same run, and the ratios:
* batch     fused greedy decoding of B prompts at once (B = 1, 4, 8, 16; uniform weights, so every member
            reads and votes at every step) against each member's own batched cached greedy decoding with
            transformers (``model.generate``, left-padded, same prompts, same number of tokens): fused
            tokens/s, the members' summed time, and fused throughput as a share of theirs (goal >= 0.85 at
            B = 8); members in parallel (a worker thread each) against one after another, and against the
            slowest member alone; peak resident memory of the decoding at each B;
* scoring   multiple-choice examples per second with and without prefix (KV cache) reuse;
* memory    peak resident memory vs the sum of the members' weights;
* fit       weight fitting on a long (~250-token) prompt as a share of its forward passes (goal <= 5%),
            and the fitted weights (to compare implementations: they must not change).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Any

from lmfuse.ensemble import Pack
from lmfuse.eval.pack_scorer import pack_scorer

sys.path.insert(0, str(Path(__file__).parent))
PROMPTS = [
    "def fibonacci(n):\n",
    "The capital of France is Paris. The capital of Italy is",
    "Once upon a time, in a small village by the sea,",
    "import json\n\ndef load(path):\n",
]
CONTEXT = ("Question: Which of these sentences uses the adjective order a native English speaker would use? "
           "Think about opinion, size, age, shape, colour, origin, material and purpose.\nOptions:\n"
           "(A) a lovely little old rectangular green French silver whittling knife\n"
           "(B) a green French lovely rectangular little old silver whittling knife\nAnswer:")
OPTIONS = [" (A)", " (B)", " both", " neither"]


def member_generate(member: Any, prompts: list[str], tokens: int) -> float:
    """Seconds for ``member`` alone to decode ``tokens`` greedy tokens after each prompt, all prompts as one
    left-padded batch with its KV cache (transformers ``generate``; prompt pass included, as for the pack)."""
    import torch

    tok = member.tokenizer
    rows = [[member.prefix_token_id, *member.encode(p).ids] for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), member.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    t0 = time.perf_counter()
    with torch.inference_mode():
        member.model.generate(input_ids=ids.to(member.device), attention_mask=mask.to(member.device),
                              max_new_tokens=tokens, min_new_tokens=tokens,
                              do_sample=False, pad_token_id=member.pad_token_id,
                              eos_token_id=tok.eos_token_id)
    return time.perf_counter() - t0


def peak_rss_reset() -> None:
    """Reset the process's peak resident set (Linux), so the next reading is the peak of what follows."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def batch(pack: Pack, tokens: int, sizes: list[int]) -> None:
    from generation_prompts import PROMPTS as BY_KIND

    pool = [p for kind in BY_KIND.values() for p in kind[:2]]  # two per kind, fifteen kinds
    pack.reconfigure(weighting="uniform")
    print("| B | fused tokens/s (parallel) | fused s | members' own s (sum; each) | fused share of members' "
          "throughput | serial s | parallel vs serial | slowest member s | fused / slowest | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for b in sizes:
        prompts = pool[:b]
        own = {m.name: member_generate(m, prompts, tokens) for m in pack.members}
        timings = {}
        for parallel in (True, False):
            pack.reconfigure(parallel=parallel)
            peak_rss_reset()
            t0 = time.perf_counter()
            gens = pack.generate(prompts, max_new_tokens=tokens, batch_size=b)
            timings[parallel] = (time.perf_counter() - t0, peak_rss(), sum(g.n_tokens for g in gens))
        fused, peak, n = timings[True]
        summed, slowest = sum(own.values()), max(own.values())
        print(f"| {b} | {n / fused:.1f} | {fused:.1f} | {summed:.1f} ({', '.join(f'{k} {v:.1f}' for k, v in own.items())}) "
              f"| {summed / fused:.2f} | {timings[False][0]:.1f} | {timings[False][0] / fused:.2f}x | {slowest:.1f} "
              f"| {fused / slowest:.2f} | {peak / 2**30:.2f} GiB |", flush=True)


def scoring(pack: Pack, n: int) -> None:
    """Multiple-choice examples per second: one at a time (context once per example, or re-read per option)
    and ``n`` examples per forward pass (`PackScorer.loglikelihood_many`); the scores must agree."""
    examples = [(f"Puzzle {i}. {CONTEXT}" if i else CONTEXT, OPTIONS) for i in range(n)]
    weightings = ["uniform", "packllm-sim", "packllm-opt"]
    reference: list[dict[str, list[float]]] = []
    for label, reuse, batched in (("one at a time, prefix reuse off", False, False),
                                  ("one at a time, prefix reuse on", True, False),
                                  (f"{n} per forward pass", True, True)):
        scorer = pack_scorer(pack, weightings, reuse_prefix=reuse)
        t0 = time.perf_counter()
        got = scorer.loglikelihood_many(examples) if batched else [scorer.loglikelihood(c, o) for c, o in examples]
        dt = time.perf_counter() - t0
        reference = reference or got
        diff = max(abs(x - y) for g, r in zip(got, reference, strict=True) for s in r for x, y in zip(g[s], r[s],
                                                                                                        strict=True))
        print(f"| {label} | {n / dt:.3f} examples/s | {dt / n:.2f} s/example | max |score diff| {diff:.1e} "
              f"(4 options, {len(pack.members)} members, 3 strategies) |", flush=True)


def memory(pack: Pack) -> None:
    weights = sum(p.numel() * p.element_size() for m in pack.members for p in m.model.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"| peak RSS {peak / 2**30:.2f} GiB | sum of member weights {weights / 2**30:.2f} GiB "
          f"| ratio {peak / weights:.2f}x |")


LONG_PROMPT = (
    "How would a typical person answer each of the following questions about causation?\n"
    "Frank T., had an ongoing dispute with his neighbor over a stretch of land and one day decided to shoot his "
    "neighbor in the body. Frank T. had no experience with guns, his hand slipped on the barrel of the gun, and "
    "the shot went wild. Nonetheless, the bullet bounced off a large boulder several feet away and hit the "
    "neighbor's body, causing significant injury. Did Frank T. intentionally shoot his neighbor in the body?\n"
    "Options:\n- Yes\n- No\nAnswer: No\n\n"
    "Suzy and Billy are working on a project that is very important for our nation's security. The boss tells "
    "them both: \"Be sure that you are here at exactly 9 am. It is absolutely essential that you arrive at that "
    "time.\" Both Billy and Suzy arrive at 9 am. As it happens, there was a motion detector installed in the "
    "room where they arrived. The motion detector was set up to be triggered if at least one person appeared in "
    "the room at the same time. So the motion detector went off. Did Billy cause the motion detector to go off?"
    "\nOptions:\n- Yes\n- No\nAnswer:")


def fit_share(pack: Pack, repeats: int = 2) -> None:
    """Weight fitting vs the prompt's forward passes on a long prompt (steady state: maps already built)."""
    from lmfuse.ensemble.runs import read_text

    t0 = time.perf_counter()
    runs = [read_text(m, LONG_PROMPT) for m in pack.members]
    forward = time.perf_counter() - t0
    a = pack.analyse(LONG_PROMPT, runs)
    for weighting in ("packllm-opt",):
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            w, report = pack.fit(a, weighting)
            best = min(best, time.perf_counter() - t0)
        seed = pack.names.index(report.seed)
        print(f"| {weighting} | seed {report.seed} | {len(runs[seed].ids)} seed tokens | fit {best:.2f} s "
              f"| forward {forward:.2f} s | share {best / forward:.1%} | weights "
              f"{', '.join(f'{n} {x:.4f}' for n, x in zip(pack.names, w.tolist(), strict=True))} "
              f"| fitted NLL {report.fitted_nll:.5f} |")


NORM_TEXTS = [
    "The committee met on Tuesday to discuss the budget for the coming year. After a long debate, the members "
    "agreed to increase spending on public libraries while cutting the cost of administration.",
    "Photosynthesis converts light energy into chemical energy. In plants it takes place in the chloroplasts, "
    "where chlorophyll absorbs mostly blue and red light and water is split to release oxygen.",
    "Q: If a train leaves at 3 pm and travels for 2 hours and 45 minutes, when does it arrive?\nA: It arrives at "
    "5:45 pm, because 3 pm plus 2 hours is 5 pm and 45 more minutes gives 5:45 pm.",
    "Le petit village se trouvait au bord de la mer. Chaque matin, les pêcheurs partaient avant l'aube et "
    "revenaient à midi avec des paniers remplis de poissons.",
]


def norm_choice(pack: Pack) -> None:
    """Which NLL normalisation on a prompt better predicts the member that is best on what follows it?"""
    import inspect
    import json
    import textwrap

    from lmfuse.ensemble.runs import read_text

    texts = [*NORM_TEXTS, inspect.getsource(json.dumps)[:700], inspect.getsource(textwrap.dedent)[:700]]
    hits = {"token": 0, "byte": 0}
    for text in texts:
        cut = len(text) // 2
        prompt, rest = text[:cut], text[cut:]
        per_token, per_byte, rest_bpb = [], [], []
        for m in pack.members:
            run = read_text(m, text)
            lp = run.token_logprobs
            first = [i for i, (a, _) in enumerate(run.offsets) if a < cut]
            head = -float(lp[: len(first)].sum())
            per_token.append(head / max(len(first), 1))
            per_byte.append(head / len(prompt.encode()))
            rest_bpb.append(-float(lp[len(first):].sum()) / len(rest.encode()) / 0.6931471805599453)
        best = min(range(len(rest_bpb)), key=rest_bpb.__getitem__)
        hits["token"] += min(range(len(per_token)), key=per_token.__getitem__) == best
        hits["byte"] += min(range(len(per_byte)), key=per_byte.__getitem__) == best
        print(f"| {text[:30]!r} | best on the rest: {pack.names[best]} ({', '.join(f'{x:.3f}' for x in rest_bpb)} bpb) "
              f"| top1 by token: {pack.names[min(range(len(per_token)), key=per_token.__getitem__)]} "
              f"| top1 by byte: {pack.names[min(range(len(per_byte)), key=per_byte.__getitem__)]} |")
    print(f"| prompt top1 picks the member best on the continuation | per token {hits['token']}/{len(texts)} "
          f"| per byte {hits['byte']}/{len(texts)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", help="specs separated by '+', each as `--model` takes it, e.g. "
                                          "smollm2,device=cuda:0+gemma3 (default: the installed default pack)")
    parser.add_argument("--device", help="device of every member that does not name one (cpu, cuda, cuda:1)")
    parser.add_argument("--dtype", default="float32", help="dtype of members (float32, bfloat16, float16)")
    parser.add_argument("--tokens", type=int, default=16, help="tokens decoded per prompt (batch part)")
    parser.add_argument("--mc", type=int, default=8, help="multiple-choice examples per scoring run (and batch)")
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--parts", default="norm,batch,scoring,fit,memory")
    args = parser.parse_args()
    if args.members:
        specs = args.members.split("+")
    else:
        from lmfuse.models import zoo

        specs = [n for n in zoo.ZOO if zoo.converted_path(n) is not None]
    if args.device:
        specs = [s if ",device=" in s else f"{s},device={args.device}" for s in specs]
    t0 = time.perf_counter()
    pack = Pack.load(specs, dtype=args.dtype)
    print(f"loaded {', '.join(pack.names)} in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    pack.weights(PROMPTS[0])  # builds (or loads from the disk cache) every vocabulary map once
    print(f"first weights (incl. vocabulary maps) {time.perf_counter() - t0:.1f} s")
    parts = args.parts.split(",")
    if "norm" in parts:
        norm_choice(pack)
    if "batch" in parts:
        batch(pack, args.tokens, [int(b) for b in args.batch_sizes.split(",")])
    if "scoring" in parts:
        scoring(pack, args.mc)
    if "fit" in parts:
        fit_share(pack)
    if "memory" in parts:
        memory(pack)


if __name__ == "__main__":
    main()
