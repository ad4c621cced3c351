"""Parquet in and out. A BOOK/ directory holds NAME.parquet or a folder NAME/ of Parquet parts."""

import os
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .book import Book
from .errors import BookError

REQUIRED = ("instruments", "risk_tiers", "accounts", "positions")
OPTIONAL = ("orders", "marks")


def table_path(book_dir: Path, name: str) -> Path | None:
    for p in (book_dir / f"{name}.parquet", book_dir / name):
        if p.exists():
            return p
    return None


def read_table(path: Path | str) -> pl.DataFrame:
    """One Parquet file or a folder of parts, as polars (errors name the path)."""
    path = Path(path)
    if not path.exists():
        raise BookError(str(path), None, "no such file or folder")
    try:
        if path.is_dir():
            parts = sorted(path.rglob("*.parquet"))
            if not parts:
                raise BookError(str(path), None, "folder holds no .parquet files")
            return pl.from_arrow(pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default"))
        return pl.from_arrow(pq.read_table(path))
    except (pa.ArrowInvalid, OSError) as e:
        raise BookError(str(path), None, f"cannot read as Parquet: {e}") from None


def load_book(book_dir: Path | str, marks: Path | str | None = None,
              money_scale: dict[str, int] | None = None) -> Book:
    """Load and validate BOOK/ (and an optional marks file that replaces BOOK/marks)."""
    book_dir = Path(book_dir)
    if not book_dir.is_dir():
        raise BookError(str(book_dir), None, "not a book directory")
    tables, names = {}, {}
    for name in REQUIRED + OPTIONAL:
        path = Path(marks) if (name == "marks" and marks is not None) else table_path(book_dir, name)
        if path is None:
            if name in REQUIRED:
                raise BookError(str(book_dir / f"{name}.parquet"), None, "missing table")
            continue
        tables[name], names[name] = read_table(path), str(path)
    return Book.from_tables(**tables, money_scale=money_scale, names=names)


def write_parquet(df: pl.DataFrame | pa.Table, path: Path) -> None:
    """Write atomically: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    table = df.to_arrow() if isinstance(df, pl.DataFrame) else df
    pq.write_table(table, tmp)
    os.replace(tmp, path)
