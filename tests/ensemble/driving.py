"""Run a reader's steps alone (what `lmfuse.ensemble.generate.Decoder` does for many at once)."""

from __future__ import annotations

from typing import Any

from lmfuse.ensemble.reader import Reader, Steps


def drive(reader: Reader, steps: Steps) -> Any:
    """Feed each of the reader's requests to its member, one at a time; return what the steps return."""
    try:
        feed = next(steps)
        while True:
            feed = steps.send(reader.member.feed([feed])[0])
    except StopIteration as stop:
        return stop.value
