"""The training corpus: texts from HF ``datasets`` (local text/JSONL/parquet files or a Dataset), cut into rows.

Every stage sees the same rows in the same order: row ``r`` is the r-th chunk of the corpus. A long
document is cut at line boundaries into chunks of at most ``max_chars`` characters, so that each row
fits every member's context (the reference splits by token count under all tokenizers; cutting by
characters needs no tokenizer and gives the same guarantee when ``max_chars`` is small enough).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmfuse.errors import InputError, one_line

_BUILDERS = {".txt": "text", ".md": "text", ".py": "text", ".jsonl": "json", ".json": "json",
             ".parquet": "parquet", ".csv": "csv"}


def load_texts(source: str | Path | Any, text_field: str = "text", split: str = "train") -> list[str]:
    """Texts of a corpus: a ``datasets.Dataset``, a file (.txt/.jsonl/.json/.parquet/.csv) or a directory of them.

    A plain-text file is one document (``sample_by="document"``), as a source file or a play is.
    """
    import datasets

    if isinstance(source, datasets.Dataset):
        ds = source
    else:
        path = Path(source).expanduser()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        if not path.exists():
            raise InputError(f"corpus {str(source)!r} does not exist")
        kinds = {_BUILDERS.get(p.suffix) for p in files}
        if None in kinds or len(kinds) != 1:
            raise InputError(
                f"corpus {str(source)!r}: expected files of one kind among {sorted(_BUILDERS)}, "
                f"found suffixes {sorted({p.suffix for p in files})}"
            )
        (builder,) = kinds
        assert builder is not None  # None was refused above
        kwargs: dict[str, Any] = {"sample_by": "document"} if builder == "text" else {}
        ds = load_files(builder, files, split, f"corpus {str(source)!r}", **kwargs)
    if text_field not in ds.column_names:
        raise InputError(f"corpus has no column {text_field!r}; columns: {', '.join(ds.column_names)}")
    return [t for t in ds[text_field] if isinstance(t, str) and t.strip()]


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_chars`` characters, at line ends where possible.

    The pieces concatenate back to ``text`` exactly (nothing is dropped or added).
    """
    if max_chars <= 0:
        raise InputError(f"max_chars must be positive, got {max_chars}")
    pieces: list[str] = []
    current = ""
    for line in text.splitlines(keepends=True):
        while len(line) > max_chars:  # one very long line: hard cut
            if current:
                pieces.append(current)
                current = ""
            pieces.append(line[:max_chars])
            line = line[max_chars:]
        if len(current) + len(line) > max_chars and current:
            pieces.append(current)
            current = ""
        current += line
    if current:
        pieces.append(current)
    return pieces


def corpus_rows(source: str | Path | Any, text_field: str = "text", split: str = "train",
                max_chars: int = 2000, limit: int | None = None) -> list[str]:
    """The rows every stage iterates over: chunks of the corpus texts, in order, ``limit`` at most."""
    rows = [chunk for text in load_texts(source, text_field, split) for chunk in chunk_text(text, max_chars)]
    rows = [r for r in rows if r.strip()]
    return rows[:limit] if limit is not None else rows


def load_files(builder: str, files: list[Path], split: str, what: str, **kwargs: Any) -> Any:
    """``datasets.load_dataset`` over local files; a file it cannot parse (not UTF-8, malformed JSON or
    CSV) is one clear error naming the data, instead of a `DatasetGenerationError` traceback."""
    import datasets

    # datasets' "Generating train split" bar would sit above an error on stderr; lmfuse shows its own progress.
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(builder, data_files=[str(p) for p in files], split=split, **kwargs)
    except (datasets.exceptions.DatasetGenerationError, UnicodeDecodeError, ValueError) as exc:
        cause = exc.__cause__ or exc
        detail = one_line(cause, 200)
        raise InputError(f"{what}: the {builder} files cannot be read ({type(cause).__name__}: {detail}); "
                         "they must be UTF-8 and well formed") from None
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
