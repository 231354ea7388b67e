"""Generation fidelity: all weight on member B, decoding through another member's tokens.

    python benchmarks/generation.py --out out/bench/generation.jsonl     # default pack, 15 kinds
    python benchmarks/generation.py --members toy --tokens 8              # tiny members, end to end (CPU check)

For every ordered pair (A, B): the pack ``[A, B]`` with weights (0, 1) and the seed fixed to A (so decoding
emits A's tokens and B only votes, with its exact covering probabilities: `lmfuse.ensemble.votes`) writes
greedily until it has as many characters as B's own greedy text of ``--tokens`` tokens. Fidelity is the share
of B's characters reproduced before the first difference. For each divergence the row shows B's own step
there: its two likeliest tokens and their log-prob gap (a *near-tie* when the gap is below 1e-4).

A second check (``default``) leaves the seed unfixed: the seed is then the member with the most weight, B, and
the text must equal B's own exactly (the one-hot invariant of fused decoding).

Results are appended to ``--out`` as JSON lines and reused on a rerun (the run resumes where it stopped);
the tables are printed from the whole file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from lmfuse.ensemble import Pack
from lmfuse.ensemble.generate import Decoding, Stream, generate_all
from lmfuse.models.member import Member

sys.path.insert(0, str(Path(__file__).parent))
from generation_prompts import PROMPTS

NEAR_TIE = 1e-4


class Recording(Decoding):
    """A one-member decoding that keeps, per step, where its token starts and its two likeliest tokens."""

    steps: list[tuple[int, list[int], float]]

    def _fused_row(self) -> torch.Tensor:
        row = super()._fused_row()
        top = row.topk(2)
        if not hasattr(self, "steps"):
            self.steps = []
        self.steps.append((len(self.text), top.indices.tolist(), float(top.values[0] - top.values[1])))
        return row


def own_greedy(member: Member, prompt: str, tokens: int) -> dict[str, Any]:
    pack = Pack([member])
    recording = Recording(pack, prompt, max_new_tokens=tokens)
    generate_all(pack, [recording], None)
    return {"text": recording.text, "steps": getattr(recording, "steps", []), "seconds": recording.timings["decode"]}


def fused_text(pack: Pack, prompt: str, chars: int, tokens: int) -> tuple[str, Stream, float]:
    """Generate until the text has ``chars`` characters (or ``tokens`` seed tokens)."""
    t0 = time.perf_counter()
    stream = Stream(pack, prompt, max_new_tokens=tokens)
    text = ""
    for piece in stream:
        text += piece
        if len(text) > chars:
            break
    return text, stream, time.perf_counter() - t0


def first_difference(reference: str, got: str) -> int:
    return next((i for i, (a, b) in enumerate(zip(reference, got, strict=False)) if a != b),
                min(len(reference), len(got)))


def load_members(names: str) -> list[Member]:
    if names == "toy":
        from lmfuse.models.toy import FAMILIES, toy_member

        return [toy_member(f, seed=i) for i, f in enumerate(FAMILIES) if f != "wordpiece"]
    from lmfuse.models import zoo
    from lmfuse.models.load import load_member

    chosen = names.split(",") if names else list(zoo.ZOO)
    return [load_member(n) for n in chosen]


def run(args: argparse.Namespace) -> None:
    members = load_members(args.members)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["key"] for line in out.read_text().splitlines()} if out.exists() else set()
    kinds = args.kinds.split(",") if args.kinds else list(PROMPTS)
    own: dict[tuple[str, str], dict[str, Any]] = {}
    with out.open("a") as sink:
        for b in members:
            for kind in kinds:
                for i, prompt in enumerate(PROMPTS[kind][: max(args.per_kind, args.default_per_kind)]):
                    pending = [a for a in members if a is not b and f"{a.name}>{b.name}|{kind}|{i}" not in done
                               and i < args.per_kind]
                    check = f"default|{b.name}|{kind}|{i}"
                    if not pending and (check in done or i >= args.default_per_kind):
                        continue
                    ref = own.setdefault((b.name, prompt), own_greedy(b, prompt, args.tokens))
                    for a in pending:
                        pack = Pack([a, b], weighting="fixed", seed_member=a.name, weights=[0, 1])
                        text, stream, seconds = fused_text(pack, prompt, len(ref["text"]), 4 * args.tokens)
                        row = compare(ref, text, b)
                        row.update(key=f"{a.name}>{b.name}|{kind}|{i}", seed=a.name, member=b.name, kind=kind,
                                   prompt=prompt, seconds=seconds, own_seconds=ref["seconds"],
                                   cut=sum(stream.cut) / max(len(stream.cut), 1), steps=stream.timings["steps"])
                        sink.write(json.dumps(row) + "\n")
                        sink.flush()
                        print(f"{row['key']}: {row['fidelity']:.3f}", flush=True)
                    if i < args.default_per_kind and check not in done:
                        other = next(a for a in members if a is not b)
                        pack = Pack([other, b], weighting="fixed", weights=[0, 1])
                        text, _, _ = fused_text(pack, prompt, len(ref["text"]), args.tokens)
                        row = {"key": check, "member": b.name, "kind": kind, "identical": text == ref["text"]}
                        sink.write(json.dumps(row) + "\n")
                        sink.flush()


def compare(ref: dict[str, Any], text: str, b: Member) -> dict[str, Any]:
    reference = ref["text"]
    at = first_difference(reference, text)
    row: dict[str, Any] = {"fidelity": at / max(len(reference), 1), "identical": at >= len(reference),
                           "reference": reference, "text": text[: len(reference) + 8]}
    if at < len(reference):
        step = max((s for s in ref["steps"] if s[0] <= at), key=lambda s: s[0])
        tok = b.tokenizer
        row["divergence"] = {"char": at, "b_top": [tok.decode([t]) for t in step[1]], "gap": step[2],
                             "near_tie": step[2] < NEAR_TIE}
    return row


def tables(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    pairs = [r for r in rows if not r["key"].startswith("default|")]
    by_pair: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in pairs:
        by_pair[f"{r['seed']} -> {r['member']}"].append(r)
    print("\n| seed -> all weight on | fidelity (chars) | identical | worst kind | divergences not near-ties | "
          "mean cut share | fused / own seconds |")
    print("|---|---|---|---|---|---|---|")
    for name, rs in sorted(by_pair.items()):
        kinds: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rs:
            kinds[r["kind"]].append(r)
        per_kind = {k: _fidelity(v) for k, v in kinds.items()}
        worst = min(per_kind, key=lambda k: per_kind[k])
        hard = sum(1 for r in rs if "divergence" in r and not r["divergence"]["near_tie"])
        print(f"| {name} | {_fidelity(rs):.3f} | {sum(r['identical'] for r in rs)}/{len(rs)} | {worst} "
              f"{per_kind[worst]:.3f} | {hard} | {sum(r['cut'] for r in rs) / len(rs):.3f} | "
              f"{sum(r['seconds'] for r in rs) / max(sum(r['own_seconds'] for r in rs), 1e-9):.2f} |")
    kinds_all = sorted({r["kind"] for r in pairs})
    print("\n| kind | " + " | ".join(sorted(by_pair)) + " |")
    print("|---|" + "---|" * len(by_pair))
    for k in kinds_all:
        print(f"| {k} | " + " | ".join(f"{_fidelity([r for r in by_pair[p] if r['kind'] == k]):.3f}"
                                        for p in sorted(by_pair)) + " |")
    if pairs:
        print(f"\noverall fidelity {_fidelity(pairs):.3f} over {len(pairs)} generations")
    checks = [r for r in rows if r["key"].startswith("default|")]
    if checks:
        print(f"default seed (the heaviest member): {sum(r['identical'] for r in checks)}/{len(checks)} texts "
              "identical to the member's own")
    print("\ndivergences:")
    for r in pairs:
        if "divergence" in r:
            d = r["divergence"]
            print(f"  {r['key']}: char {d['char']}, B's top two {d['b_top']!r} gap {d['gap']:.2e}"
                  f"{' (near-tie)' if d['near_tie'] else ''}; B {r['reference']!r} / fused {r['text']!r}")


def _fidelity(rows: list[dict[str, Any]]) -> float:
    total = sum(len(r["reference"]) for r in rows)
    return sum(r["fidelity"] * len(r["reference"]) for r in rows) / max(total, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", default="", help="comma-separated zoo names (default: the default pack), or toy")
    p.add_argument("--tokens", type=int, default=16, help="B's own greedy tokens per prompt")
    p.add_argument("--per-kind", type=int, default=2, help="prompts per kind for the fixed-seed pairs")
    p.add_argument("--default-per-kind", type=int, default=4, help="prompts per kind for the unfixed-seed check")
    p.add_argument("--kinds", default="", help="comma-separated kinds (default: all fifteen)")
    p.add_argument("--out", default="out/bench/generation.jsonl")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    if not args.report_only:
        run(args)
    tables(Path(args.out))


if __name__ == "__main__":
    main()
