"""What a loaded evaluation task is: multiple-choice examples, or a text in chunks (`lmfuse.eval.tasks` loads
them; `lmfuse.eval.sources`, `formats` and `mcsets` build them from their data)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MCExample:
    """One multiple-choice example. ``query`` ends where the answer begins; ``options`` are the
    continuations scored; ``correct`` holds the indices of the options counted as right."""

    query: str
    options: tuple[str, ...]
    correct: tuple[int, ...]
    task_prefix: str = ""
    separator: str = "\n"
    group: str = ""  # subtask name; demonstrations are drawn from the same group

    def demo(self) -> tuple[str, str]:
        """This example as a solved demonstration: its query and its (first) correct option."""
        return self.query, self.options[self.correct[0]]


@dataclass(frozen=True)
class Named:
    """What every task has: its name (as given, ``kind:argument``) and where its data was read from."""

    name: str
    source: str


@dataclass(frozen=True)
class MCTask(Named):
    """Multiple-choice examples, scored by accuracy."""

    examples: list[MCExample]
    kind: str = field(default="mc", init=False)


@dataclass(frozen=True)
class TextTask(Named):
    """A text corpus for bits per byte, split into chunks that together are exactly the text."""

    chunks: list[str]
    kind: str = field(default="text", init=False)


Task = MCTask | TextTask
