"""Ticks (docs/model.md §8.1): the error a bad tick raises, one tick's checks, and a whole
tick table parsed and checked before a replay runs."""

import numpy as np
import polars as pl

from ..book import Book
from ..errors import BookError, check
from ..tables import as_float64, as_frame, codes, lookup, require, str_col


class TickError(BookError):
    """A bad tick (unknown symbol, NaN or non-positive price, time going backwards): nothing applied."""


def tick_table(ts) -> str:
    return "tick" if ts is None else f"tick at {ts}"


def symbol_ids(book: Book, symbols, ts=None) -> np.ndarray:
    """Dense ids of symbol names (TickError naming the unknown ones)."""
    symbols = symbols if isinstance(symbols, pl.Series) else pl.Series("symbol", list(symbols), dtype=pl.String)
    try:
        return codes(symbols.cast(pl.String).alias("symbol"), book.instruments.symbol, tick_table(ts),
                     "unknown symbol").astype(np.int64)
    except BookError as e:
        raise TickError(e.table, e.column, e.problem, e.rows) from None


def check_tick(sym, prices, ts, last_ts):
    """(symbol ids, prices) of one tick as int64 and float64 arrays, or TickError: a price
    per symbol, finite and positive, no symbol twice, `ts` not before `last_ts`."""
    table = tick_table(ts)
    sym = np.asarray(sym, dtype=np.int64)
    price = np.asarray(prices, dtype=np.float64)
    if len(price) != len(sym):
        raise TickError(table, "mark_price", "one price per symbol expected")
    bad = np.flatnonzero(~(np.isfinite(price) & (price > 0)))
    if len(bad):
        raise TickError(table, "mark_price", "price must be finite and positive", bad)
    if len(np.unique(sym)) != len(sym):
        raise TickError(table, "symbol", "symbol twice in one tick")
    if ts is not None and last_ts is not None and ts < last_ts:
        raise TickError(table, "ts", f"time goes backwards (last tick at {last_ts})")
    return sym, price


def load_ticks(table, book: Book, name: str = "ticks"):
    """Parse and check a whole tick table (columns ts, symbol, mark_price) before anything
    runs; returns (ts, symbol ids with -1 where unknown, prices, symbol names). Refused with
    one line naming `name`, the column and the rows: a missing column, a null or non-text
    symbol, a null or non-numeric price, a null, NaN or infinite ts, a ts that is neither
    numbers nor timestamps. An unknown symbol, a NaN or non-positive price and time going
    backwards are bad ticks: the replay skips each such tick (TickError), nothing of it applied."""
    df = as_frame(table, name)
    require(df, name, "ts", "symbol", "mark_price")
    names = str_col(df, name, "symbol").cast(pl.String)
    p = df["mark_price"]
    if not (p.dtype.is_numeric() or p.dtype == pl.Null):
        raise BookError(name, "mark_price", f"expected numbers, got {p.dtype}")
    if p.null_count():
        raise BookError(name, "mark_price", "null value", np.flatnonzero(p.is_null().to_numpy()))
    price = as_float64(p).to_numpy() if len(p) else np.zeros(0)
    t = df["ts"]
    if not (t.dtype.is_numeric() or t.dtype.is_temporal()) or isinstance(t.dtype, (pl.Duration, pl.Time)):
        raise BookError(name, "ts", f"expected numbers or timestamps, got {t.dtype}")
    if t.null_count():
        raise BookError(name, "ts", "null value", np.flatnonzero(t.is_null().to_numpy()))
    if t.dtype.is_float() or isinstance(t.dtype, pl.Decimal):
        t = as_float64(t)
        check(np.isfinite(t.to_numpy()), name, "ts", "NaN or infinite value")
    ts = t.to_numpy()
    sym = lookup(names, book.instruments.symbol)
    return ts, sym, price, names
