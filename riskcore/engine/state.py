"""The tick engine's incremental state (docs/model.md §8.1).

Two copies of the per-position figures: book order (`out.positions`, what the scan kernels
write) and symbol-major (`cols`: each symbol's rows one contiguous slice, grouped by wallet,
with a mirror of the hot position columns), plus each wallet's running sums (`w_state`, see
kernels.WALLET_STATE) from which its account figures (`out.accounts`) are re-derived.

Where the state changes, it changes in pairs:
- a small tick removes each row's old contribution from its wallet's sums and adds the new
  one (kernels.tick_positions: `+= new − old`), then re-derives those wallets
  (tick_accounts);
- a full scan makes the symbol-major copy stale (`invalidate`), and `refresh` brings a
  symbol's slice back from book order when a small tick next needs it;
- a book change (forced close) is followed by `resync(wallets)`: the wallets' rows and sums
  recomputed exactly from the book and copied into the mirror.
"""

import numpy as np
from numba import njit, prange

from ..book import Book
from ..config import JIT, JIT_PARALLEL
from ..kernels import (ACCOUNT_FIGURES, WALLET_STATE, Marks, PositionColumns, RunningFigures, SymbolTable,
                       tick_accounts, tick_positions)
from ..scan import ScanArrays, scan_into

MIRRORED = ("qty", "isolated", "isolated_margin", "entry_unit", "inv_leverage")  # book columns copied
FIGURES = ("upnl", "mm", "im", "fee", "notional")


class TickState:
    """Figures of every position and wallet of `book`, kept current tick by tick."""

    def __init__(self, book: Book, mark: np.ndarray):
        """Every figure at `mark`, computed exactly (resync)."""
        self.book = book
        pos, n_sym, n_w = book.positions, len(book.instruments), len(book.wallets)
        self.sym_rows, self.row_start = symbol_major(pos.symbol, n_sym)  # symbol-major index → book row
        by_symbol = self.sym_rows
        symbol, wallet = pos.symbol[by_symbol], pos.wallet[by_symbol].astype(np.int64)
        # (symbol, wallet) keys in symbol-major order are sorted already (book order is wallet
        # by wallet and the sort stable), so their distinct values are where they change
        keys = symbol.astype(np.int64) * n_w + wallet
        pairs = keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys
        self.sym_wallets = (pairs % max(n_w, 1)).astype(np.int64)       # each symbol's wallets, sorted
        self.sym_wallet_start = np.searchsorted(pairs // max(n_w, 1), np.arange(n_sym + 1))
        self.row_of = np.empty(len(pos), dtype=np.int64)                 # book row → symbol-major index
        self.row_of[self.sym_rows] = np.arange(len(pos))
        self.accounts = np.zeros((n_w, len(ACCOUNT_FIGURES)))            # one row per wallet: see tick_accounts
        self.out = ScanArrays.empty(len(pos), n_w, packed_accounts=self.accounts)
        self.w_state = np.zeros((n_w, WALLET_STATE))
        # the symbol-major mirror: written by resync below
        self.cols = {"symbol": symbol, "wallet": wallet}
        self.cols.update({name: np.empty(len(pos), getattr(pos, name).dtype) for name in MIRRORED})
        self.cols.update({name: np.empty(len(pos)) for name in FIGURES})
        self.cols["liquidate"] = np.empty(len(pos), dtype=bool)
        self.stale = np.zeros(n_sym, dtype=bool)
        self.became = np.zeros(len(pos), dtype=bool)              # scratch: rows that became liquidatable
        self.became_wallets = np.zeros(n_w, dtype=bool)           # scratch: wallets that did
        # the kernels' views of the above, built once (their arrays are only ever written in place)
        c, none = self.cols, np.zeros(0)
        self.k_rows = PositionColumns(c["wallet"], c["symbol"], c["qty"], none, none, c["entry_unit"], c["inv_leverage"],
                                      c["isolated"], c["isolated_margin"])
        self.k_run = RunningFigures(*(c[name] for name in FIGURES), c["liquidate"])
        self.k_inst = SymbolTable.of(book)
        self.resync(mark)

    # -- where rows and wallets are ----------------------------------------------------
    def n_rows(self, sym: np.ndarray) -> int:
        """How many positions the symbols hold."""
        return int((self.row_start[sym + 1] - self.row_start[sym]).sum())

    def rows_of_symbol(self, s) -> np.ndarray:
        """Book rows of symbol s, grouped by wallet."""
        return self.sym_rows[self.row_start[s]:self.row_start[s + 1]]

    def wallets_of_symbols(self, sym: np.ndarray) -> np.ndarray:
        """The wallets holding a position in any of `sym` (sorted)."""
        wlo, whi = self.sym_wallet_start[sym], self.sym_wallet_start[sym + 1]
        if len(sym) == 1:
            return self.sym_wallets[wlo[0]:whi[0]]
        return np.unique(np.concatenate([self.sym_wallets[a:b] for a, b in zip(wlo, whi)]))

    def wallet_rows(self, wallets: np.ndarray) -> np.ndarray:
        """Book rows of `wallets`, wallet after wallet."""
        pos_start = self.book.wallets.pos_start
        return ranges(pos_start[wallets], pos_start[wallets + 1])

    # -- ticks ---------------------------------------------------------------------------
    def tick(self, sym: np.ndarray, mark: np.ndarray, wallets: np.ndarray):
        """A small tick of sorted symbols `sym` (marks already in `mark`): their rows' new
        figures replace the old in their wallets' sums (remove old, add new), and those
        wallets (wallets_of_symbols(sym)) are re-derived. Returns (the wallets that became
        liquidatable, the book rows that did, symbol by symbol)."""
        self.refresh(sym[self.stale[sym]])
        starts, ends = self.row_start[sym], self.row_start[sym + 1]
        tick_positions(starts, ends, self.k_rows, self.k_run, self.k_inst, Marks(mark, *self.book.face_mark(mark)),
                       self.w_state, self.sym_rows, self.out.positions["liquidate"], self.became)
        became = self.became_wallets[:len(wallets)]
        tick_accounts(wallets, self.w_state, self.accounts, self.out.accounts["liquidate"], became)
        if len(sym) == 1:
            rows = starts[0] + np.flatnonzero(self.became[starts[0]:ends[0]])
        else:
            rows = np.concatenate([a + np.flatnonzero(self.became[a:b]) for a, b in zip(starts, ends)])
        return wallets[became], self.sym_rows[rows]

    def full_scan(self, mark: np.ndarray) -> None:
        """An exact parallel scan of the whole book in book order (the running sums recomputed);
        the symbol-major figures go stale."""
        scan_into(self.book, mark, self.out, with_liq_price=False, sums=self.w_state)
        self.invalidate()

    def invalidate(self) -> None:
        self.stale[:] = True

    def refresh(self, symbols) -> None:
        """Bring the symbol-major figures of stale `symbols` up to date from the book-order ones."""
        p, s = self.out.positions, self.cols
        for sym in symbols:
            lo, hi = self.row_start[sym], self.row_start[sym + 1]
            rows = self.sym_rows[lo:hi]
            for name in FIGURES + ("liquidate",):
                s[name][lo:hi] = p[name][rows]
            s["liquidate"][lo:hi] &= s["isolated"][lo:hi]
            self.stale[sym] = False

    def resync(self, mark: np.ndarray, wallets=None) -> None:
        """Recompute exactly (no running sums) the given wallets, or everything: book-order
        figures by the scan kernels, then the symbol-major copy (book columns included) and
        the wallets' sums."""
        pos = self.book.positions
        rows = None if wallets is None else self.wallet_rows(wallets)
        scan_into(self.book, mark, self.out, with_liq_price=False, wallets=wallets, sums=self.w_state)
        p, s = self.out.positions, self.cols
        if rows is None:  # everything: gather into symbol-major order
            for name in MIRRORED:
                _take(getattr(pos, name), self.sym_rows, s[name])
            for name in FIGURES:
                _take(p[name], self.sym_rows, s[name])
            _take(p["liquidate"] & pos.isolated, self.sym_rows, s["liquidate"])
            self.stale[:] = False
            return
        j = self.row_of[rows]
        for name in MIRRORED:
            s[name][j] = getattr(pos, name)[rows]
        for name in FIGURES:
            s[name][j] = p[name][rows]
        s["liquidate"][j] = p["liquidate"][rows] & pos.isolated[rows]

    # -- figures out ---------------------------------------------------------------------
    def row_figures(self, rows: np.ndarray) -> dict:
        """Current (upnl, mm, fee, notional) of book rows, from whichever order holds them."""
        names = ("upnl", "mm", "fee", "notional")
        stale = self.stale[self.book.positions.symbol[rows]]
        j = self.row_of[rows]
        return {name: np.where(stale, self.out.positions[name][rows], self.cols[name][j]) for name in names}

    def position_figures(self) -> dict[str, np.ndarray]:
        """Per-position figures (upnl, mm, im, fee, notional, isolated flags) in book order."""
        self.refresh(np.flatnonzero(self.stale))
        return {name: self.cols[name][self.row_of] for name in FIGURES + ("liquidate",)}


@njit(**JIT)
def symbol_major(symbol, n_symbols):
    """(book rows in symbol-major order, each symbol's start in it): a stable counting sort,
    so each symbol's rows stay in book order (wallet by wallet)."""
    row_start = np.zeros(n_symbols + 1, np.int64)
    for i in range(len(symbol)):
        row_start[symbol[i] + 1] += 1
    for s in range(n_symbols):
        row_start[s + 1] += row_start[s]
    rows = np.empty(len(symbol), np.int64)
    at = row_start[:-1].copy()
    for i in range(len(symbol)):
        rows[at[symbol[i]]] = i
        at[symbol[i]] += 1
    return rows, row_start


@njit(**JIT_PARALLEL)
def _take(values, rows, out):
    """out[i] = values[rows[i]], on every core (np.take is one thread: 0.8 s of a 10M resync)."""
    for i in prange(len(rows)):
        out[i] = values[rows[i]]


def ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The integers of [lo[k], hi[k]) for every k, concatenated (vectorised)."""
    lo, hi = np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)
    if len(lo) and np.array_equal(lo[1:], hi[:-1]) and np.all(hi >= lo):  # one run (all wallets, say)
        return np.arange(lo[0], hi[-1], dtype=np.int64)
    n = np.maximum(hi - lo, 0)
    total = int(n.sum())
    if not total:
        return np.zeros(0, np.int64)
    return np.arange(total, dtype=np.int64) + np.repeat(lo - (np.cumsum(n) - n), n)
