"""The event log (docs/model.md §8.2) as columnar buffers: one growable numpy array per
column (capacity doubled when full, so appending is amortised O(1) per event), appended one
event or a block of events at a time; `frame(book)` builds the events table. Every event has
a sequence number, its place in the engine's whole history (a restored engine's log starts
at the snapshot's next number)."""

import numpy as np
import polars as pl

from ..book import SIDES, Book
from ..money import units_to_decimal
from ..tables import categorical

EVENT_KINDS = ("account_liquidatable", "position_liquidatable", "liquidation_close", "adl_close",
               "insurance_fund_shortfall")
ACCOUNT_LIQUIDATABLE, POSITION_LIQUIDATABLE, LIQUIDATION_CLOSE, ADL_CLOSE, FUND_SHORTFALL = range(5)
CLOSE_KINDS = (LIQUIDATION_CLOSE, ADL_CLOSE, FUND_SHORTFALL)  # the events that move money (§8.6)

# column -> (dtype, value when not given)
COLUMNS = {"ts": (object, None), "kind": (np.int32, 0), "wallet": (np.int64, 0), "row": (np.int64, -1),
           "qty": (np.float64, np.nan), "price": (np.float64, np.nan), "realized": (np.int64, 0),
           "fund": (np.int64, 0), "equity": (np.float64, np.nan), "mm": (np.float64, np.nan),
           "risk_ratio": (np.float64, np.nan)}


class EventLog:
    """Events so far, column by column. `row` is the book row of the position (−1 for a
    wallet's event); `realized` and `fund` are exact int64 units of the wallet's asset.
    The log's k-th event has sequence number first_seq + k."""

    def __init__(self, capacity: int = 1024, first_seq: int = 0):
        self.first_seq = first_seq
        self._n = 0
        self._cols = {name: np.full(max(capacity, 1), fill, dtype=dtype) for name, (dtype, fill) in COLUMNS.items()}

    def __len__(self) -> int:
        return self._n

    @property
    def next_seq(self) -> int:
        """The sequence number the next event will have."""
        return self.first_seq + self._n

    @property
    def capacity(self) -> int:
        return len(self._cols["kind"])

    def column(self, name: str, start: int = 0) -> np.ndarray:
        """Values start..len(self) of a column (a view: do not keep it across appends)."""
        return self._cols[name][start:self._n]

    def reserve(self, extra: int) -> int:
        """Room for `extra` more events (capacity doubled until it fits); returns the first free index."""
        need = self._n + extra
        if need > self.capacity:
            capacity = self.capacity
            while capacity < need:
                capacity *= 2
            for name, (dtype, _) in COLUMNS.items():  # every writer writes every column of its events
                grown = np.empty(capacity, dtype=dtype)
                grown[:self._n] = self._cols[name][:self._n]
                self._cols[name] = grown
        return self._n

    def append(self, ts, kind: int, wallet, row=-1, qty=np.nan, price=np.nan, realized=0, fund=0,
               equity=np.nan, mm=np.nan, risk_ratio=np.nan) -> None:
        """One event."""
        k = self.reserve(1)
        c = self._cols
        c["ts"][k], c["kind"][k], c["wallet"][k], c["row"][k] = ts, kind, wallet, row
        c["qty"][k], c["price"][k], c["realized"][k], c["fund"][k] = qty, price, realized, fund
        c["equity"][k], c["mm"][k], c["risk_ratio"][k] = equity, mm, risk_ratio
        self._n = k + 1

    def append_block(self, ts, kind: int, wallet: np.ndarray, **columns) -> None:
        """len(wallet) events of one kind at one ts; other columns are arrays of that length
        or scalars (absent ones take their default)."""
        n = len(wallet)
        if not n:
            return
        k = self.reserve(n)
        c = self._cols
        c["ts"][k:k + n] = [ts] * n
        c["kind"][k:k + n] = kind
        c["wallet"][k:k + n] = wallet
        for name, (_, fill) in COLUMNS.items():
            if name not in ("ts", "kind", "wallet"):
                c[name][k:k + n] = columns.get(name, fill)
        self._n = k + n

    def kernel_columns(self) -> tuple:
        """The columns a compiled writer fills in place from len(self) (liquidation's round):
        all but ts; it then calls extend_to."""
        c = self._cols
        return tuple(c[name] for name in ("kind", "wallet", "row", "qty", "price", "realized", "fund", "equity", "mm",
                                          "risk_ratio"))

    def extend_to(self, n: int, ts) -> None:
        """Take events len(self)..n, written into kernel_columns, at time ts."""
        self._cols["ts"][self._n:n] = [ts] * (n - self._n)
        self._n = n

    def start(self, since_seq: int | None) -> int:
        """Index of the first event numbered since_seq or later (0: every event)."""
        return 0 if since_seq is None else min(max(since_seq - self.first_seq, 0), self._n)

    def frame(self, book: Book, since_seq: int | None = None) -> pl.DataFrame:
        """The events table (columns: model §8.2), money as exact decimals of the wallet's
        asset: every event of the log, or those numbered since_seq and later."""
        start = self.start(since_seq)
        n = self._n - start

        def column(name):
            return self.column(name, start)
        wal, row = column("wallet"), column("row")
        has_row = row >= 0
        r = np.where(has_row, row, 0)
        asset = book.wallets.asset[wal] if n else np.zeros(0, np.int32)
        scale = book.output_scale

        def money(name):
            return pl.from_arrow(units_to_decimal(column(name), scale, book.asset_scale[asset]))

        return pl.DataFrame({
            "seq": np.arange(self.first_seq + start, self.first_seq + self._n, dtype=np.int64),
            "ts": _ts_column(column("ts")),
            "kind": categorical(column("kind").copy(), EVENT_KINDS),
            "account_id": book.wallets.account_id[wal], "asset": categorical(asset, book.assets),
            "symbol": _names(book.instruments.symbol, book.positions.symbol[r], has_row),
            "position_side": _names(SIDES, book.positions.side[r], has_row),
            "qty": column("qty").copy(), "price": column("price").copy(),
            "realized_pnl": money("realized"), "insurance_fund_delta": money("fund"),
            "equity": column("equity").copy(), "mm": column("mm").copy(),
            "risk_ratio": column("risk_ratio").copy(),
        })


def _names(names, codes: np.ndarray, present: np.ndarray) -> pl.Series:
    """Text column: names[codes] where present, else null."""
    picked = pl.Series(list(names), dtype=pl.String).gather(codes)
    return pl.select(pl.when(pl.Series(present)).then(picked)).to_series()


def _ts_column(ts: np.ndarray) -> pl.Series:
    """The ts column: each run of one tick's events shares its ts, converted once per run."""
    if not len(ts):
        return pl.Series([], dtype=pl.Null)
    new = np.r_[True, ts[1:] != ts[:-1]] if len(ts) > 1 else np.ones(1, bool)
    first = np.flatnonzero(new)
    return pl.Series([_plain(ts[i]) for i in first]).gather(np.cumsum(new) - 1)


def _plain(ts):
    """numpy scalars (datetime64, int64) as Python values, so polars can type the column."""
    if isinstance(ts, np.datetime64):
        return ts.astype("datetime64[us]").item()
    return ts.item() if isinstance(ts, np.generic) else ts
