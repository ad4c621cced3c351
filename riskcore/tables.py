"""Turning user tables (polars, pyarrow, dicts) into checked numpy columns.

Every helper raises BookError naming the table, the column and the 0-based rows at fault.
"""

from decimal import ROUND_05UP, Decimal, localcontext

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from .errors import BookError, check

# What polars cannot take from Arrow is converted here (exactly) or refused with one line;
# nothing reaches pl.from_arrow that could make it panic.
DECIMAL_LIMIT_PLACES = 19  # decimal256 beyond decimal128: exact to 19 places (round-to-odd), |v| < 10**19


class ColumnSource:
    """A table that hands out its columns one at a time (`source[name]` a polars Series,
    `columns`, `height`): the loaders read no more of a frame than that, so they take one
    as it is (io.ColumnsOnRequest reads each column from Parquet when asked)."""
    columns: list[str]
    height: int

    def __getitem__(self, name: str) -> pl.Series:
        raise NotImplementedError


def as_frame(obj, table: str) -> pl.DataFrame | ColumnSource:
    if isinstance(obj, (pl.DataFrame, ColumnSource)):
        return obj
    try:
        if isinstance(obj, pl.LazyFrame):
            return obj.collect()
        if isinstance(obj, (pa.Table, pa.RecordBatch)):
            return arrow_to_frame(obj, table)
        if isinstance(obj, dict):
            return pl.DataFrame(obj)
    except BookError:
        raise
    except (Exception, pl.exceptions.PanicException) as e:
        raise BookError(table, None, f"cannot read as a table: {first_line(e)}") from None
    raise BookError(table, None, f"expected a polars or pyarrow table, got {type(obj).__name__}")


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def arrow_to_frame(table, name: str) -> pl.DataFrame:
    """The one door from Arrow (a user's pyarrow table or a Parquet file) into polars:
    every column normalised (normalize_arrow), then converted; a column polars still cannot
    take is refused naming it."""
    table = normalize_arrow(table, name)
    try:
        return pl.from_arrow(table)
    except (Exception, pl.exceptions.PanicException):
        pass
    for i, field in enumerate(table.schema):  # find the column at fault, to name it
        try:
            pl.from_arrow(pa.table({"c": table.column(i)}))
        except (Exception, pl.exceptions.PanicException) as e:
            raise BookError(name, field.name, f"cannot read Arrow type {field.type}: {first_line(e)}") from None
    raise BookError(name, None, "cannot read as a table")


def normalize_arrow(table, name: str) -> pa.Table:
    """Arrow columns in types polars reads without loss: decimal256 narrowed to decimal128
    (exactly, or refused naming rows), negative-scale decimals rescaled, dictionaries of
    non-text decoded, time zones polars does not know read as UTC (same instants), text
    checked to be UTF-8. Types polars cannot read at all are refused naming the column."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    names = table.schema.names
    seen = set()
    for c in names:
        if c in seen:
            raise BookError(name, c, "column appears more than once")
        seen.add(c)
    columns, changed = [], False
    for field, col in zip(table.schema, table.columns):
        new = _normalize_column(col, field.name, name)
        changed |= new is not col
        columns.append(new)
    return pa.Table.from_arrays(columns, names=names) if changed else table


def _has(t: pa.DataType, pred) -> bool:
    """Whether `t` or any type nested in it satisfies pred."""
    if pred(t):
        return True
    if pa.types.is_dictionary(t):
        return _has(t.value_type, pred)
    return any(_has(t.field(i).type, pred) for i in range(t.num_fields))


def needs_normalizing(t: pa.DataType) -> bool:
    """Whether normalize_arrow changes (or refuses) a column of type t; text is only checked."""
    return ((pa.types.is_dictionary(t) and not _is_text(t.value_type)) or (pa.types.is_timestamp(t) and t.tz is not None)
            or (pa.types.is_decimal(t) and t.scale < 0) or _has(t, pa.types.is_decimal256))


def _normalize_column(col: pa.ChunkedArray, column: str, name: str) -> pa.ChunkedArray:
    t = col.type
    if not needs_normalizing(t):
        if _is_text(t) or (pa.types.is_dictionary(t) and _is_text(t.value_type)):
            _check_utf8(col, column, name)
        return col
    if pa.types.is_dictionary(t):
        return _normalize_column(col.cast(t.value_type), column, name)  # decode: plain values
    if pa.types.is_decimal(t):
        return _narrow_decimal(col, column, name)
    if pa.types.is_timestamp(t):
        try:
            pl.from_arrow(pa.table({"c": col.slice(0, 0)}))
        except (Exception, pl.exceptions.PanicException):
            return col.cast(pa.timestamp(t.unit, "UTC"))  # the same instants
        return col
    raise BookError(name, column, f"cannot read Arrow type {t} (decimal256 inside a nested column)")


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _check_utf8(col: pa.ChunkedArray, column: str, name: str) -> None:
    try:
        col.validate(full=True)
    except pa.ArrowException as e:
        raise BookError(name, column, f"text is not valid UTF-8: {first_line(e)}") from None


def _narrow_decimal(col: pa.ChunkedArray, column: str, name: str) -> pa.ChunkedArray:
    """decimal256 (or a negative-scale decimal) as decimal128: a lossless cast where the
    values fit; otherwise exact to 19 places by round-to-odd (ROUND_05UP), which keeps any
    later half-even rounding to 18 places or fewer exact; |value| >= 10**19 is refused."""
    t = col.type
    targets = []
    if t.scale >= 0:
        if t.precision <= 38:
            targets.append(pa.decimal128(t.precision, t.scale))
        elif t.scale <= 38:
            targets.append(pa.decimal128(38, t.scale))
    elif t.precision - t.scale <= 38:
        targets.append(pa.decimal128(t.precision - t.scale, 0))
    for target in targets:
        try:
            return col.cast(target)  # safe cast: raises rather than lose a digit
        except pa.ArrowException:
            pass
    values = col.to_pylist()
    limit = Decimal(10) ** DECIMAL_LIMIT_PLACES
    big = [i for i, v in enumerate(values) if v is not None and abs(v) >= limit]
    if big:
        raise BookError(name, column, f"decimal of magnitude 10^{DECIMAL_LIMIT_PLACES} or more "
                                      "does not fit riskcore's 38-digit decimals", big)
    quantum = Decimal(1).scaleb(-DECIMAL_LIMIT_PLACES)
    with localcontext() as ctx:
        ctx.prec = 200
        out = [None if v is None else v.quantize(quantum, rounding=ROUND_05UP) for v in values]
    return pa.chunked_array([pa.array(out, pa.decimal128(38, DECIMAL_LIMIT_PLACES))])


def out_of_int64(s: pl.Series, limit: int = 2**63 - 1, low: int | None = None) -> np.ndarray:
    """Per row, whether an integer of any width (or a decimal's Int128 physical value) lies
    outside [low, limit] (low defaults to -limit - 1); nulls count as inside."""
    low = -limit - 1 if low is None else low
    v = pl.col("v")
    if s.dtype == pl.UInt128:  # compared in its own type: it may exceed Int128
        out = pl.DataFrame({"v": s}).select(v > pl.lit(limit, dtype=pl.UInt128)).to_series()
        return out.fill_null(False).to_numpy()
    out = pl.DataFrame({"v": s.cast(pl.Int128)}).select(
        (v > pl.lit(limit, dtype=pl.Int128)) | (v < pl.lit(low, dtype=pl.Int128))).to_series()
    return out.fill_null(False).to_numpy()


def float_text64(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """An Arrow float column as float64 meaning the decimal each value prints as (float32
    0.1 is 0.1); float64 is returned as is."""
    t = col.type
    if pa.types.is_float64(t):
        return col
    if pa.types.is_float32(t):
        return col.cast(pa.string()).cast(pa.float64())
    return pa.chunked_array([pa.array([None if v is None else float(str(np.float16(v))) for v in col.to_pylist()],
                                      pa.float64())])


def as_float64(s: pl.Series) -> pl.Series:
    """A numeric series as Float64 meaning the decimal each value prints as: float32 0.1 is
    0.1 (via its shortest text), not 0.100000001490116; integers and decimals are cast."""
    if s.dtype == pl.Float32:
        return s.cast(pl.String).cast(pl.Float64)
    if s.dtype == pl.Float16:
        return pl.Series(s.name, [None if v is None else float(str(np.float16(v))) for v in s.to_list()],
                         dtype=pl.Float64)
    return s.cast(pl.Float64)


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
    if s.dtype in (pl.UInt64, pl.Int128, pl.UInt128):
        big = out_of_int64(s)
        check(~big, table, name, "integer outside the 64-bit signed range")
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
    x = as_float64(s).fill_null(np.nan).to_numpy()
    present = ~s.is_null().to_numpy()
    check(np.isfinite(x) | ~present, table, name, "NaN or infinite value")
    return x


def lookup(values, categories) -> np.ndarray:
    """Index (int64) of each text in `categories`, -1 where absent or null: the lenient
    name → id lookup (requests and ticks reject such rows instead of raising). `values` is a
    polars Series or anything polars makes a text Series of.

    Works on the column's dictionary (polars' category table, an Arrow dictionary, or one
    built by hashing plain text), so the per-row work is one integer gather however long
    the strings are.
    """
    if not isinstance(values, pl.Series):
        values = pl.Series(values, dtype=pl.String)
    index = {c: i for i, c in enumerate(categories)}
    if isinstance(values.dtype, pl.Categorical):  # codes into polars' category table: no Arrow round trip
        table = values.dtype.categories.to_series().to_list()
        lut = np.array([index.get(v, -1) for v in table] + [-1], dtype=np.int64)
        return lut[values.to_physical().fill_null(len(table)).to_numpy()]
    arr = values.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not isinstance(arr, pa.DictionaryArray):
        arr = pc.dictionary_encode(arr)
    if not len(arr):
        return np.empty(0, np.int64)
    lut = np.array([index.get(v, -1) for v in arr.dictionary.to_pylist()] + [-1], dtype=np.int64)
    return lut[pc.fill_null(arr.indices, len(arr.dictionary)).to_numpy(zero_copy_only=False)]


def codes(values: pl.Series, categories: list[str], table: str, problem: str) -> np.ndarray:
    """Map text to its index (int32) in `categories`; any value not there is an error (the
    strict lookup: BookError naming the table, the column, a few values and every row)."""
    mapped = lookup(values, categories)
    missing = mapped < 0
    if missing.any():
        shown = sorted({str(values[int(i)]) for i in np.flatnonzero(missing)[:1000]})[:5]
        raise BookError(table, values.name, f"{problem}: {', '.join(shown)}", np.flatnonzero(missing))
    return mapped.astype(np.int32)


def categorical(codes: np.ndarray, categories) -> pl.Series:
    """A categorical column from integer codes without materialising a string per row."""
    return pl.from_arrow(pa.DictionaryArray.from_arrays(pa.array(np.asarray(codes, dtype=np.int32)),
                                                         pa.array(list(categories), type=pa.string())))
