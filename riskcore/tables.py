"""Turning user tables (polars, pyarrow, dicts) into checked numpy columns.

Every helper raises BookError naming the table, the column and the 0-based rows at fault.
"""

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from .errors import BookError, check


def as_frame(obj, table: str) -> pl.DataFrame:
    if isinstance(obj, pl.DataFrame):
        return obj
    if isinstance(obj, pl.LazyFrame):
        return obj.collect()
    if isinstance(obj, (pa.Table, pa.RecordBatch)):
        return pl.from_arrow(obj)
    if isinstance(obj, dict):
        return pl.DataFrame(obj)
    raise BookError(table, None, f"expected a polars or pyarrow table, got {type(obj).__name__}")


def require(df: pl.DataFrame, table: str, *columns: str) -> None:
    for c in columns:
        if c not in df.columns:
            raise BookError(table, c, "missing column")


def _no_nulls(s: pl.Series, table: str) -> None:
    if s.null_count():
        raise BookError(table, s.name, "null value", np.flatnonzero(s.is_null().to_numpy()))


def str_col(df: pl.DataFrame, table: str, name: str, default: str | None = None) -> pl.Series:
    """A text column (utf8, categorical or dictionary); nulls take `default` when one is given."""
    if name not in df.columns:
        if default is None:
            raise BookError(table, name, "missing column")
        return pl.repeat(default, df.height, dtype=pl.String, eager=True).alias(name)
    s = df[name]
    if s.dtype == pl.Null:
        s = s.cast(pl.String)
    if not (s.dtype == pl.String or isinstance(s.dtype, (pl.Categorical, pl.Enum))):
        raise BookError(table, name, f"expected text, got {s.dtype}")
    if default is not None:
        return s.fill_null(default)
    _no_nulls(s, table)
    return s


def int_col(df: pl.DataFrame, table: str, name: str) -> np.ndarray:
    require(df, table, name)
    s = df[name]
    if not s.dtype.is_integer():
        raise BookError(table, name, f"expected integers, got {s.dtype}")
    _no_nulls(s, table)
    return s.cast(pl.Int64).to_numpy()


def float_col(df: pl.DataFrame, table: str, name: str, default: float | None = None,
              nullable: bool = False) -> np.ndarray:
    """A finite float64 column. Nulls become NaN only where `nullable`."""
    if name not in df.columns:
        if default is None:
            raise BookError(table, name, "missing column")
        return np.full(df.height, default, dtype=np.float64)
    s = df[name]
    if s.dtype == pl.Null:
        s = s.cast(pl.Float64)
    if not (s.dtype.is_numeric() or isinstance(s.dtype, pl.Decimal)):
        raise BookError(table, name, f"expected numbers, got {s.dtype}")
    if not nullable:
        _no_nulls(s, table)
    x = s.cast(pl.Float64).fill_null(np.nan).to_numpy()
    present = ~s.is_null().to_numpy()
    check(np.isfinite(x) | ~present, table, name, "NaN or infinite value")
    return x


def codes(values: pl.Series, categories: list[str], table: str, problem: str) -> np.ndarray:
    """Map text to its index in `categories`; any value not there is an error.

    Works on the Arrow dictionary (built by hashing when the column is plain text), so the
    per-row work is one integer gather however long the strings are.
    """
    arr = values.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not isinstance(arr, pa.DictionaryArray):
        arr = pc.dictionary_encode(arr)
    index = {c: i for i, c in enumerate(categories)}
    lut = np.array([index.get(v, -1) for v in arr.dictionary.to_pylist()] + [-1], dtype=np.int32)
    mapped = lut[arr.indices.to_numpy(zero_copy_only=False)] if len(arr) else np.empty(0, np.int32)
    missing = mapped < 0
    if missing.any():
        shown = sorted({str(values[int(i)]) for i in np.flatnonzero(missing)[:1000]})[:5]
        raise BookError(table, values.name, f"{problem}: {', '.join(shown)}", np.flatnonzero(missing))
    return mapped


def group_violations(sorted_idx: np.ndarray, starts: np.ndarray, bad_group: np.ndarray) -> np.ndarray:
    """Original rows of every member of the groups flagged bad (groups given as run starts)."""
    lengths = np.diff(np.append(starts, len(sorted_idx)))
    member_bad = np.repeat(bad_group, lengths)
    return np.sort(sorted_idx[member_bad])


def categorical(codes: np.ndarray, categories) -> pl.Series:
    """A categorical column from integer codes without materialising a string per row."""
    return pl.from_arrow(pa.DictionaryArray.from_arrays(pa.array(np.asarray(codes, dtype=np.int32)),
                                                         pa.array(list(categories), type=pa.string())))
