"""Turning user tables (polars, pyarrow, dicts) into checked numpy columns.

Every helper raises BookError naming the table, the column and the 0-based rows at fault.
"""

import numpy as np
import polars as pl
import pyarrow as pa

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
    """A utf8 column (categorical/dictionary accepted); nulls take `default` when one is given."""
    if name not in df.columns:
        if default is None:
            raise BookError(table, name, "missing column")
        return pl.Series(name, [default] * df.height, dtype=pl.String)
    s = df[name]
    if s.dtype == pl.Null:
        s = s.cast(pl.String)
    if not (s.dtype == pl.String or isinstance(s.dtype, (pl.Categorical, pl.Enum))):
        raise BookError(table, name, f"expected text, got {s.dtype}")
    s = s.cast(pl.String)
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
    """Map text to its index in `categories`; any value not there is an error."""
    lookup = pl.DataFrame({"_v": categories, "_code": np.arange(len(categories), dtype=np.int32)})
    mapped = pl.DataFrame({"_v": values}).join(lookup, on="_v", how="left", maintain_order="left")["_code"]
    missing = mapped.is_null().to_numpy()
    if missing.any():
        shown = sorted(set(values.filter(pl.Series(missing)).head(1000).to_list()))[:5]
        raise BookError(table, values.name, f"{problem}: {', '.join(map(str, shown))}", np.flatnonzero(missing))
    return mapped.to_numpy().astype(np.int32)


def group_violations(sorted_idx: np.ndarray, starts: np.ndarray, bad_group: np.ndarray) -> np.ndarray:
    """Original rows of every member of the groups flagged bad (groups given as run starts)."""
    lengths = np.diff(np.append(starts, len(sorted_idx)))
    member_bad = np.repeat(bad_group, lengths)
    return np.sort(sorted_idx[member_bad])
