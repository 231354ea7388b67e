"""Is every pinned archive still served? One cheap index query per package, no download.

Registries drop packages (``bigbench==1.0.0`` vanished in 2026 and took every BIG-bench task with it
while CI stayed green, because no test fetches data). ``check`` asks the package index's JSON simple
API (PEP 691) for each pinned package and compares the listed files with the pins: the file name must
be listed, not yanked, and carry the pinned sha256. Three outcomes per archive:

- ``ok``: listed with the pinned sha256;
- ``missing``: the index answered and the file is not there (or its hash differs): a real failure;
- ``unreachable``: the index did not answer (time-out, DNS, 5xx): a warning, so a registry hiccup does
  not block work.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lmfuse.assets import Archive

DEFAULT_INDEX = "https://pypi.org/simple"
_ACCEPT = "application/vnd.pypi.simple.v1+json"

# (package) -> the index's JSON listing, or raises OSError / urllib.error.URLError when unreachable,
# or returns None when the index says the package does not exist (HTTP 404).
Lister = Callable[[str], dict | None]


@dataclass(frozen=True)
class Served:
    archive: Archive
    used_by: str  # the asset or model that needs it
    status: str  # "ok" | "missing" | "unreachable"
    detail: str


def index_url() -> str:
    """``$LMFUSE_INDEX_URL``, else pip's ``$PIP_INDEX_URL``, else PyPI."""
    return (os.environ.get("LMFUSE_INDEX_URL") or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).rstrip("/")


def http_lister(base: str | None = None, timeout: float = 10.0) -> Lister:
    """A `Lister` over the JSON simple API at ``base`` (default `index_url`)."""
    root = base or index_url()

    def listing(package: str) -> dict | None:
        name = package.lower().replace("_", "-").replace(".", "-")
        request = urllib.request.Request(f"{root}/{name}/", headers={"Accept": _ACCEPT})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                data = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        return data if isinstance(data, dict) else {}

    return listing


def check_archive(archive: Archive, used_by: str, lister: Lister) -> Served:
    try:
        listing = lister(archive.package)
    except (OSError, ValueError) as exc:  # URLError and time-outs are OSErrors; ValueError: a garbled page
        return Served(archive, used_by, "unreachable", f"index did not answer: {exc}")
    if listing is None:
        return Served(archive, used_by, "missing", f"no such package {archive.package!r} on the index")
    files = {f.get("filename"): f for f in listing.get("files", []) if isinstance(f, dict)}
    entry = files.get(archive.filename)
    if entry is None:
        versions = listing.get("versions") or sorted({str(name).split("-")[1] for name in files if "-" in str(name)})
        return Served(archive, used_by, "missing",
                      f"no such version: {archive.requirement} ({archive.filename}) is not listed; "
                      f"served versions: {', '.join(map(str, versions)) or 'none'}")
    if entry.get("yanked"):
        return Served(archive, used_by, "missing", f"{archive.filename} is yanked")
    listed = (entry.get("hashes") or {}).get("sha256")
    if archive.sha256 and listed and listed != archive.sha256:
        return Served(archive, used_by, "missing",
                      f"{archive.filename} is listed with sha256 {listed}, pinned {archive.sha256}")
    return Served(archive, used_by, "ok", "listed" + (" with the pinned sha256" if listed else ""))


def check(pins: Iterable[tuple[str, Archive]], lister: Lister | None = None) -> list[Served]:
    """One `Served` per ``(used_by, archive)``; the index is asked once per package."""
    ask = lister or http_lister()
    cache: dict[str, dict | Exception | None] = {}

    def cached(package: str) -> dict | None:
        if package not in cache:
            try:
                cache[package] = ask(package)
            except (OSError, ValueError) as exc:
                cache[package] = exc
        got = cache[package]
        if isinstance(got, Exception):
            raise got
        return got

    return [check_archive(archive, used_by, cached) for used_by, archive in pins]
