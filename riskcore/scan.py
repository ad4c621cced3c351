"""The full scan (docs/model.md §4–6): public entry point around the scan kernel (kernels.scan_pass)."""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from .book import MODES, SIDES, Book
from .kernels import (ACCOUNT_FIGURES, POSITION_FIGURES, AccountFigures, Marks, PositionColumns, PositionFigures,
                      SymbolTable, WalletColumns, account_views, scan_pass)
from .io import as_book, as_table, write_parquet, write_parquet_parts
from .tables import categorical

PART_ROWS = 1_000_000  # positions per part of write_scan: ~100 MB of figures in flight
NULL_WHEN_NAN = ("margin_balance", "risk_ratio", "liq_price")  # null for cross rows / no solution

# The scan's output tables, in column order; the keys are in every output (`columns=` below).
POSITION_KEYS = ("account_id", "symbol", "position_side")
ACCOUNT_KEYS = ("account_id", "asset")
POSITION_COLUMNS = (*POSITION_KEYS, "margin_mode", "qty", *POSITION_FIGURES, "liquidate")
ACCOUNT_COLUMNS = (*ACCOUNT_KEYS, "equity", "cross_mm", "cross_im", "cross_fee", "order_margin", "risk_ratio",
                   "available_balance", "transferable", "total_equity", "liquidate")


def output_columns(columns=None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The (positions, accounts) columns of a scan asked for `columns`: every column for None,
    else the keys and the names given (a name is taken from each table that has it, e.g.
    `liquidate` from both), in the tables' own order. An unknown name is a ValueError."""
    if columns is None:
        return POSITION_COLUMNS, ACCOUNT_COLUMNS
    asked = {columns} if isinstance(columns, str) else set(columns)
    unknown = sorted(asked.difference(POSITION_COLUMNS, ACCOUNT_COLUMNS))
    if unknown:
        raise ValueError(f"unknown column{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                         f"(positions: {','.join(POSITION_COLUMNS)}; accounts: {','.join(ACCOUNT_COLUMNS)})")
    return (tuple(c for c in POSITION_COLUMNS if c in asked or c in POSITION_KEYS),
            tuple(c for c in ACCOUNT_COLUMNS if c in asked or c in ACCOUNT_KEYS))


@dataclass
class ScanArrays:
    """Output buffers of the scan kernel; the tick engine keeps one set and reuses it."""
    positions: dict[str, np.ndarray]
    accounts: dict[str, np.ndarray]

    @classmethod
    def empty(cls, n_positions: int, n_wallets: int, packed_accounts: np.ndarray | None = None):
        """Fresh buffers; account figures may be views into one row-per-wallet array
        (columns in ACCOUNT_FIGURES order), as the tick engine keeps them."""
        # Filled here, by one thread: the kernel's two threads faulting fresh pages in at once
        # contend in the kernel's memory map (10M positions: 0.9 s in the scan vs 0.24 s here).
        pos = {name: np.full(n_positions, np.nan) for name in POSITION_FIGURES}
        pos["liquidate"] = np.full(n_positions, False)
        liquidate = np.full(n_wallets, False)
        if packed_accounts is None:
            acct = {name: np.full(n_wallets, np.nan) for name in ACCOUNT_FIGURES} | {"liquidate": liquidate}
        else:
            acct = account_views(packed_accounts, liquidate)._asdict()
        return cls(pos, acct)

    def position_figures(self) -> PositionFigures:
        """The position buffers as the kernels take them."""
        return PositionFigures(**self.positions)

    def account_figures(self) -> AccountFigures:
        """The account buffers as the kernels take them."""
        return AccountFigures(**self.accounts)


def scan_into(book: Book, mark: np.ndarray, out: ScanArrays, with_positions: bool = True,
              with_liq_price: bool = True, wallets: np.ndarray | None = None, sums: np.ndarray | None = None,
              part: tuple[int, int] | None = None) -> None:
    """Run the scan kernel at `mark`, writing into `out`: over the whole book, or over
    `wallets` (all their positions), or over the wallets of `part` = (w0, w1) with `out`
    holding just their rows and wallets (write_scan's parts). Without with_positions, only
    the flags and the account figures are written. `sums` (n_wallets × kernels.WALLET_STATE)
    also records each wallet's running state."""
    wal, pos = WalletColumns.of(book), PositionColumns.of(book.positions)
    if part is not None:
        wal, pos = _part_columns(wal, pos, *part)
    scan_pass(_NO_WALLETS if wallets is None else wallets, wallets is None, wal, pos, SymbolTable.of(book),
              Marks(mark, *book.face_mark(mark)), out.position_figures(), out.account_figures(), with_positions,
              with_liq_price, sums is not None, _NO_SUMS if sums is None else sums)


def _part_columns(wal: WalletColumns, pos: PositionColumns, w0: int, w1: int):
    """Views of wallets w0:w1 and their rows, as the kernel takes a whole book."""
    r0, r1 = wal.pos_start[w0], wal.pos_start[w1]
    return (WalletColumns(*(column[w0:w1] for column in wal))._replace(pos_start=wal.pos_start[w0:w1 + 1] - r0),
            PositionColumns(*(column[r0:r1] for column in pos)))


def part_bounds(book: Book, part_rows: int) -> list[tuple[int, int]]:
    """Consecutive wallet ranges (w0, w1) of about part_rows positions each (a wallet is
    never split); one empty range for an empty book."""
    pos_start, n_wallets = book.wallets.pos_start, len(book.wallets)
    cuts = np.searchsorted(pos_start, np.arange(part_rows, pos_start[-1], part_rows))
    bounds = np.unique(np.r_[0, cuts, n_wallets]).tolist()
    return list(zip(bounds[:-1], bounds[1:])) or [(0, 0)]


_NO_WALLETS = np.empty(0, np.int64)
_NO_SUMS = np.zeros((0, 1))


def _money(x: float) -> str:
    """Readable for USDT millions and BTC fractions alike."""
    return f"{x:>18,.2f}" if abs(x) >= 100 else f"{x:>18.8f}"


def _worst(frame: pl.DataFrame, top: int) -> pl.DataFrame:
    """The `top` rows of highest risk ratio, highest first (ties in row order): top_k, not a
    sort of millions of rows."""
    return (frame.with_row_index("_row").top_k(top, by=["risk_ratio", -pl.col("_row").cast(pl.Int64)])
            .sort("risk_ratio", "_row", descending=[True, False]).drop("_row"))


SUMMARY_TOP = 5  # rows of each "worst" list in a summary


@dataclass
class PositionTally:
    """What a summary shows of the positions, gathered from a whole frame or part by part
    (`add` each part in book order): how many, how many flagged cross and isolated (None
    when the flags were not asked for), and the worst flagged isolated positions."""
    positions: int = 0
    cross_to_liquidate: int | None = None
    isolated_to_liquidate: int | None = None
    worst_isolated: pl.DataFrame | None = None

    def add(self, part: pl.DataFrame) -> None:
        self.positions += part.height
        if not _has(part, "liquidate", "margin_mode"):
            return
        flagged = part.filter(pl.col("liquidate"))
        isolated = flagged.filter(pl.col("margin_mode") == "isolated")
        self.cross_to_liquidate = (self.cross_to_liquidate or 0) + flagged.height - isolated.height
        self.isolated_to_liquidate = (self.isolated_to_liquidate or 0) + isolated.height
        if _has(part, "qty", "margin_balance", "mm", "risk_ratio"):
            shown = isolated.select("account_id", "symbol", "position_side", "qty", "margin_balance", "mm",
                                    "risk_ratio")
            both = shown if self.worst_isolated is None else pl.concat([self.worst_isolated, shown])
            self.worst_isolated = _worst(both, SUMMARY_TOP)  # ties in book order: parts arrive in order


@dataclass
class ScanResult:
    positions: pl.DataFrame
    accounts: pl.DataFrame
    kernel_seconds: float
    assets: list[str]

    def summary(self) -> str:
        """What a risk desk looks at first: who must be liquidated, the worst ratios, totals
        (each part shown when the result has its columns: see scan's `columns`)."""
        tally = PositionTally()
        tally.add(self.positions)
        return summary_text(tally, self.accounts, self.kernel_seconds)


def summary_text(tally: PositionTally, acc: pl.DataFrame, kernel_seconds: float) -> str:
    """The scan's summary from its positions' tally and its accounts frame."""
    top = SUMMARY_TOP
    lines = [f"scanned {tally.positions:,} positions in {acc.height:,} wallets "
             f"({acc['account_id'].n_unique():,} accounts) in {kernel_seconds * 1e3:.1f} ms"]
    flags = tally.cross_to_liquidate is not None and _has(acc, "liquidate")
    if flags:
        lines.append(f"to liquidate: {int(acc['liquidate'].sum()):,} cross accounts "
                     f"({tally.cross_to_liquidate:,} positions), {tally.isolated_to_liquidate:,} isolated positions")
    if _has(acc, "equity", "cross_mm", "cross_fee", "risk_ratio"):
        shown = acc.select("account_id", "asset", "equity", "cross_mm", "cross_fee", "risk_ratio")
        worst = _worst(shown.filter(pl.col("cross_mm") > 0), top)  # a copy of six columns, not all
        if worst.height:
            lines.append(f"worst {worst.height} cross accounts by risk ratio:")
            lines += [f"  account {r['account_id']:>10} {r['asset']:<5} equity {_money(r['equity'])}  "
                      f"mm {_money(r['cross_mm'])}  fee {_money(r['cross_fee'])}  risk {r['risk_ratio']:.4f}"
                      for r in worst.iter_rows(named=True)]
    if flags and tally.worst_isolated is not None and tally.worst_isolated.height:
        lines.append(f"isolated positions to liquidate, worst {tally.worst_isolated.height} by risk ratio:")
        lines += [f"  account {r['account_id']:>10} {r['symbol']:<10} {r['position_side']:<5} "
                  f"qty {r['qty']:>16,.6g}  margin balance {r['margin_balance']:>14,.6g}  "
                  f"mm {r['mm']:>12,.6g}  risk {r['risk_ratio']:.4f}"
                  for r in tally.worst_isolated.iter_rows(named=True)]
    if _has(acc, "equity", "cross_mm", "order_margin", "total_equity", "liquidate"):
        totals = (acc.group_by("asset", maintain_order=True)
                  .agg(pl.len().alias("wallets"), pl.col("equity").sum(), pl.col("cross_mm").sum(),
                       pl.col("order_margin").sum(), pl.col("total_equity").sum(),
                       pl.col("liquidate").sum().alias("to_liquidate"))
                  .sort("wallets", "asset", descending=[True, False]))
        lines.append("totals per settlement asset" + (f" (the {top} with most wallets of {totals.height}):"
                                                      if totals.height > top else ":"))
        lines += [f"  {r['asset']:<5} wallets {r['wallets']:>9,}  equity {_money(r['equity'])}  "
                  f"cross mm {_money(r['cross_mm'])}  order margin {_money(r['order_margin'])}  "
                  f"to liquidate {r['to_liquidate']:,}"
                  for r in totals.head(top).iter_rows(named=True)]
    return "\n".join(lines)


def _has(frame: pl.DataFrame, *columns: str) -> bool:
    return all(c in frame.columns for c in columns)


def scan(book, marks=None, *, liq_prices: bool = True, columns=None) -> ScanResult:
    """Every figure of model §4–6 for every position and wallet, as polars DataFrames.

    `book`: a Book or a book folder; `marks`: a marks table (polars/pyarrow, or a Parquet
    path) or None to use the book's own marks. Every
    symbol with a non-flat position needs a mark. `columns`: names of positions and accounts
    columns to return (the keys are always there; see output_columns); liquidation prices
    are computed only when `liq_price` is among them and `liq_prices` holds (else null).
    Output rows are in book order (positions by account, asset, symbol, side; wallets by
    account, asset); figure columns are the kernel's arrays, handed to polars without a copy
    where polars allows.
    """
    position_columns, account_columns = output_columns(columns)
    book, mark = _book_and_mark(book, marks)
    with_liq_price = liq_prices and "liq_price" in position_columns
    out = ScanArrays.empty(len(book.positions), len(book.wallets))
    scan_into(book, mark, out, with_liq_price=with_liq_price, wallets=_NO_WALLETS)  # load the kernel: not timed
    t = time.perf_counter()
    scan_into(book, mark, out, with_liq_price=with_liq_price)
    seconds = time.perf_counter() - t
    return ScanResult(_positions_frame(book, out, position_columns), _accounts_frame(book, out, account_columns),
                      seconds, book.assets)


def write_scan(book, folder: Path, marks=None, *, liq_prices: bool = True, columns=None,
               part_rows: int = PART_ROWS) -> str:
    """`scan`, written as folder/positions.parquet and folder/accounts.parquet (the same
    tables), part by part: the position figures of about part_rows positions at a time, so
    a big book's figures are never all in memory and polars encodes one part while the next
    is computed. Returns the scan's summary."""
    position_columns, account_columns = output_columns(columns)
    book, mark = _book_and_mark(book, marks)
    with_liq_price = liq_prices and "liq_price" in position_columns
    pos_start = book.wallets.pos_start
    accounts = ScanArrays.empty(0, len(book.wallets)).accounts  # whole: the parts fill slices of it
    tally, seconds = PositionTally(), []

    def parts():
        for w0, w1 in part_bounds(book, part_rows):
            r0, r1 = pos_start[w0], pos_start[w1]
            out = ScanArrays(_part_buffers(r1 - r0, with_liq_price),
                             {name: column[w0:w1] for name, column in accounts.items()})
            t = time.perf_counter()
            scan_into(book, mark, out, with_liq_price=with_liq_price, part=(w0, w1))
            seconds.append(time.perf_counter() - t)
            frame = _positions_frame(book, out, position_columns, slice(r0, r1))
            tally.add(frame)
            yield frame
    scan_into(book, mark, ScanArrays.empty(0, 0), wallets=_NO_WALLETS)  # load the kernel: not timed
    write_parquet_parts(parts(), Path(folder) / "positions.parquet")
    frame = _accounts_frame(book, ScanArrays({}, accounts), account_columns)
    write_parquet(frame, Path(folder) / "accounts.parquet")
    return summary_text(tally, frame, sum(seconds))


def _part_buffers(n: int, with_liq_price: bool) -> dict[str, np.ndarray]:
    """A part's position buffers, unfilled: the kernel writes every figure of every row (the
    liquidation price only when asked: null otherwise). Small, and mostly the memory of the
    parts before, so nothing is gained by faulting them in first (see ScanArrays.empty)."""
    buffers = {name: np.empty(n) for name in POSITION_FIGURES} | {"liquidate": np.empty(n, bool)}
    if not with_liq_price:
        buffers["liq_price"][:] = np.nan
    return buffers


def _book_and_mark(book, marks) -> tuple[Book, np.ndarray]:
    """The Book (loaded if a folder) and its marks: its own, or `marks` checked against it."""
    book = as_book(book)
    marks, marks_name = as_table(marks, "marks")
    mark = book.mark if marks is None else book.read_marks(marks, marks_name)[0]
    book.check_marks(mark, None if marks is None else marks_name)
    return book, mark


def _positions_frame(book: Book, out: ScanArrays, columns: tuple[str, ...], rows: slice = slice(None)) -> pl.DataFrame:
    """The positions table of `rows` of the book, whose figures `out` holds."""
    pos = book.positions

    def column(name: str) -> pl.Series:
        if name == "account_id":
            return pl.Series(book.wallets.account_id[pos.wallet[rows]])
        if name == "symbol":
            return categorical(pos.symbol[rows], book.instruments.symbol)
        if name == "position_side":
            return categorical(pos.side[rows], SIDES)
        if name == "margin_mode":
            return categorical(pos.isolated[rows].astype(np.int32), MODES)
        if name == "qty":
            return pl.Series(pos.qty[rows])
        return pl.Series(out.positions[name], nan_to_null=name in NULL_WHEN_NAN)
    return pl.DataFrame({name: column(name) for name in columns})


def _accounts_frame(book: Book, out: ScanArrays, columns: tuple[str, ...]) -> pl.DataFrame:
    wal = book.wallets

    def column(name: str) -> pl.Series:
        if name == "account_id":
            return pl.Series(wal.account_id)
        if name == "asset":
            return categorical(wal.asset, book.assets)
        if name == "order_margin":
            return pl.Series(wal.order_margin)
        return pl.Series(out.accounts[name])
    return pl.DataFrame({name: column(name) for name in columns})
