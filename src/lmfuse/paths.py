"""Where lmfuse keeps its caches: converted zoo members, downloads, vocabulary maps, task data."""

from __future__ import annotations

import os
from pathlib import Path


def lmfuse_home() -> Path:
    """``$LMFUSE_HOME``, else ``$XDG_CACHE_HOME/lmfuse``, else ``~/.cache/lmfuse``."""
    env = os.environ.get("LMFUSE_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lmfuse"

