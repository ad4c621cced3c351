"""The tick engine (docs/model.md §8): holds a book, re-checks only what each mark update can
change, reports liquidations edge-triggered, and optionally executes them (forced close,
liquidation fee to the insurance fund, bankruptcy paid by the fund, auto-deleveraging when it
cannot).

`Engine` orchestrates: a tick is checked (ticks.py), applied to the incremental state
(state.py), reported (events.py), and, with liquidation on, closes are planned round after
round (liquidation.run_round makes a round's closes; the engine cancels their orders through
Book.cancel_orders and re-checks the wallets they touched).
"""

from copy import deepcopy
from dataclasses import replace

import numpy as np
import polars as pl

from ..book import SIDES, Book
from ..io import as_book, as_table
from ..errors import BookError
from ..kernels import margin_balance, risk_ratios
from ..money import to_units, units_to_decimal
from ..tables import as_frame, codes, require, str_col
from . import durable, liquidation
from .events import ACCOUNT_LIQUIDATABLE, ADL_CLOSE, LIQUIDATION_CLOSE, POSITION_LIQUIDATABLE, EventLog
from .screen import Screen
from .state import TickState
from .ticks import check_tick, symbol_ids

RESYNC_EVERY = 10_000  # ticks between exact recomputations of the running sums
FULL_SCAN_SHARE = 0.3  # a tick touching more of the book than this is screened (screen.py), not run row by row
SCREEN_SHARE = 0.02    # ... unless the screen leaves more of the wallets than this: then an exact full scan
SCREEN_RETRY = 10      # big ticks after a screen that left too many before the screen is tried again


class Engine:
    """Stateful risk engine over a book.

    `book` is a Book or a book folder; `marks` and `insurance_fund` (`asset`, `balance`;
    absent = 0 in every asset) are tables or Parquet paths. `liquidate=True` executes forced
    closes as liquidations appear (the engine then owns a copy of the book and changes it
    through the book's API). `resync_every` ticks the running sums are recomputed exactly.

    State: the account figures in `out.accounts` (by wallet id), kept current every tick;
    the per-position figures symbol-major (`position_figures()` gives them in book order).
    `snapshot(folder)` writes what the engine needs to go on and `Engine.restore(folder)`
    gives an engine that does exactly what this one does from there (durable.py).
    """

    def __init__(self, book, marks=None, *, liquidate: bool = False, insurance_fund=None,
                 resync_every: int = RESYNC_EVERY, fund_name: str = "insurance_fund", _resume=None):
        book = as_book(book)
        marks, marks_name = as_table(marks, "marks")
        insurance_fund, fund_name = as_table(insurance_fund, fund_name)
        self.book = deepcopy(book) if liquidate and _resume is None else book  # a restored book is its own
        book = self.book
        if liquidate and not book.positions.qty.flags.writeable:  # a loaded book's qty may be a view of its file
            book.positions.qty = book.positions.qty.copy()
        mark = book.mark if marks is None else book.read_marks(marks, marks_name)[0]
        book.check_marks(mark, None if marks is None else "marks")
        self.mark = mark.copy()
        self.execute = liquidate
        self.resync_every = resync_every
        self.fund = self._read_fund(insurance_fund, fund_name)
        # what a snapshot carries besides the book, the marks and the fund (durable.Resume)
        self.ticks = 0 if _resume is None else _resume.ticks  # ticks applied
        self.ts = None if _resume is None else _resume.ts
        self._n_orders = len(book.orders) if _resume is None else _resume.n_orders
        self._order_origin = (np.arange(len(book.orders), dtype=np.int64) if _resume is None
                              else _resume.order_origin)  # current order -> order at load
        self._events = EventLog(first_seq=0 if _resume is None else _resume.next_seq)
        self.state = TickState(book, self.mark)
        self.out = self.state.out
        self.screen = Screen(book)
        self._screen_wait = 0  # big ticks left before the screen is tried again (its keys kept meanwhile: none)
        self._stale = np.zeros(len(book.wallets), dtype=bool)  # figures older than the marks: see refresh()
        if _resume is None:  # (a snapshot was taken after an exact pass: its flags are reported)
            # what is liquidatable at load is reported once, with no timestamp
            n_w = len(book.wallets)
            self._report_accounts(np.arange(n_w), np.zeros(n_w, bool))
            iso = np.flatnonzero(book.positions.isolated)
            self._report_positions(iso, np.zeros(len(iso), bool))
            if liquidate:
                self._liquidate(np.arange(n_w))
        self.screen.rebase(self.mark, self.out)  # every figure is exact at the marks here

    # -- ticks ---------------------------------------------------------------------------
    def on_marks(self, symbols, prices, ts=None) -> int:
        """Apply one tick of symbol names and prices; returns how many events it produced
        (see `events()`). A bad tick raises TickError and changes nothing."""
        return self.on_symbol_marks(self.symbol_ids(symbols, ts), prices, ts)

    def symbol_ids(self, symbols, ts=None) -> np.ndarray:
        """Dense ids of symbol names (TickError naming the unknown ones)."""
        return symbol_ids(self.book, symbols, ts)

    def on_symbol_marks(self, sym: np.ndarray, prices, ts=None) -> int:
        """on_marks with symbols given as dense ids (the replay loop's fast path)."""
        sym, price = check_tick(sym, prices, ts, self.ts)
        self.mark[sym] = price
        self.ts = ts if ts is not None else self.ts
        n_before = len(self._events)
        sym = np.sort(sym)
        self.ticks += 1
        if self.ticks % self.resync_every == 0:
            self._exact_pass()
        elif self.state.n_rows(sym) > FULL_SCAN_SHARE * len(self.book.positions):  # most of the book moved
            if self._screen_wait or not self._screened_pass():
                self._screen_wait = max(self._screen_wait - 1, 0)
                self._exact_pass()
        else:
            self._small_tick(sym)
        return len(self._events) - n_before

    def _small_tick(self, sym: np.ndarray) -> None:
        """A tick of a few symbols: their rows' new figures replace the old in their wallets'
        running sums (state.tick); a stale wallet among them (skipped by a screened tick: its
        sums hold older marks) is recomputed exactly instead. Events in the order a tick of
        fresh wallets gives them."""
        state, pos, a, p = self.state, self.book.positions, self.out.accounts, self.out.positions
        wallets = state.wallets_of_symbols(sym)
        stale = wallets[self._stale[wallets]]
        if len(stale):
            rows = state.wallet_rows(stale)
            iso = rows[pos.isolated[rows]]
            old_acct, old_iso = a["liquidate"][stale].copy(), p["liquidate"][iso].copy()
        became_wallets, became_rows = state.tick(sym, self.mark, wallets)
        if len(stale):
            self._resync(stale)
            became_wallets = np.union1d(became_wallets[~self._stale[became_wallets]],
                                        stale[a["liquidate"][stale] & ~old_acct])
            rows = np.r_[became_rows[~self._stale[pos.wallet[became_rows]]], iso[p["liquidate"][iso] & ~old_iso]]
            became_rows = rows[np.argsort(state.row_of[rows], kind="stable")]  # symbol by symbol, as state.tick
        self._account_events(became_wallets)
        self._position_events(became_rows)
        if self.execute:
            self._liquidate(wallets)

    def _screened_pass(self) -> bool:
        """A tick that moved most of the book, looked at only where the screen says a flag can
        have changed (screen.py): those wallets recomputed exactly and reported, the others
        left as they were, stale (their flags provably unchanged; refresh() brings their
        figures up to date). False, changing nothing, when the screen leaves too many."""
        wallets = self.screen.candidates(self.mark, self.out, int(SCREEN_SHARE * len(self.book.wallets)))
        if wallets is None:  # the market moves too much for it: full scans, without keys, for a while
            self._screen_wait = SCREEN_RETRY + 1
            return False
        self._stale[:] = True
        self._recheck(wallets)
        if self.execute:
            self._liquidate(wallets)
        return True

    def _flagged(self, wallets: np.ndarray) -> np.ndarray:
        """Those of `wallets` that are liquidatable or hold a liquidatable isolated position."""
        iso = self.screen.iso_rows
        flagged = self.out.accounts["liquidate"].copy()
        flagged[self.book.positions.wallet[iso[self.out.positions["liquidate"][iso]]]] = True
        return wallets[flagged[wallets]]

    def _recheck(self, wallets: np.ndarray) -> None:
        """Wallets recomputed exactly at the marks; what became liquidatable reported."""
        pos, a, p = self.book.positions, self.out.accounts, self.out.positions
        rows = self.state.wallet_rows(wallets)
        iso = rows[pos.isolated[rows]]
        old_acct, old_iso = a["liquidate"][wallets].copy(), p["liquidate"][iso].copy()
        self._resync(wallets)
        self._report_accounts(wallets, old_acct)
        self._report_positions(iso, old_iso)

    def _resync(self, wallets: np.ndarray) -> None:
        self.state.resync(self.mark, wallets)
        self._stale[wallets] = False

    def refresh(self) -> None:
        """Bring the figures of wallets a screened tick skipped up to date (exactly; their
        flags are unchanged, as the screen proved): `out.accounts` and `position_figures()`
        then hold every wallet's figures at the marks."""
        stale = np.flatnonzero(self._stale)
        if len(stale):
            self._recheck(stale)

    def _exact_pass(self) -> None:
        """Every figure recomputed exactly (no running sums), what became liquidatable
        reported and, with liquidation on, closed. The symbol-major copies go stale and are
        refreshed symbol by symbol when a small tick needs them."""
        iso = np.flatnonzero(self.book.positions.isolated)
        old_acct, old_iso = self.out.accounts["liquidate"].copy(), self.out.positions["liquidate"][iso]
        self.state.full_scan(self.mark)
        self._stale[:] = False
        wallets = np.arange(len(self.book.wallets))
        self._report_accounts(wallets, old_acct)
        self._report_positions(iso, old_iso)
        if self.execute:
            self._liquidate(wallets)
        if not self._screen_wait:  # the closes' wallets were recomputed at these marks too
            self.screen.rebase(self.mark, self.out)

    # -- durability ----------------------------------------------------------------------
    def snapshot(self, folder, replay: dict | None = None) -> None:
        """Write everything this engine needs to go on into `folder`, whole or not at all
        (durable.write_snapshot). It first makes an exact pass (as the periodic resync does),
        so the figures a restore recomputes are this engine's own, bit for bit. `replay`: what
        a resumable replay records beside it (where it stands in its tick file)."""
        self._screen_wait = 0  # a restored engine starts with the screen's keys of this pass: so does this one
        self._exact_pass()
        durable.write_snapshot(self, folder, replay)

    @classmethod
    def restore(cls, folder) -> "Engine":
        """The engine a snapshot holds (its checksums checked first: SnapshotError if it is
        damaged); it does exactly what the snapshotted engine does from there."""
        return durable.read_snapshot(folder)[0]

    # -- events --------------------------------------------------------------------------
    def _report_accounts(self, wallets, old):
        """Events for wallets that became liquidatable (edge-triggered: again only after recovery)."""
        self._account_events(wallets[self.out.accounts["liquidate"][wallets] & ~old])

    def _report_positions(self, rows, old):
        """Events for isolated positions (book rows) that became liquidatable."""
        self._position_events(rows[self.out.positions["liquidate"][rows] & ~old])

    def _account_events(self, wallets):
        a = self.out.accounts
        self._events.append_block(self.ts, ACCOUNT_LIQUIDATABLE, wallets, equity=a["equity"][wallets],
                                  mm=a["cross_mm"][wallets], risk_ratio=a["risk_ratio"][wallets])

    def _position_events(self, rows):
        if not len(rows):
            return
        pos = self.book.positions
        f = self.state.row_figures(rows)
        balance = margin_balance(pos.isolated_margin[rows], self.book.symbol_unit[pos.symbol[rows]], f["upnl"])
        risk = risk_ratios(balance, f["mm"], f["fee"])
        self._events.append_block(self.ts, POSITION_LIQUIDATABLE, pos.wallet[rows], row=rows, qty=pos.qty[rows],
                                  price=self.mark[pos.symbol[rows]], equity=balance, mm=f["mm"], risk_ratio=risk)

    # -- forced liquidation ---------------------------------------------------------------
    def _liquidate(self, wallets, max_rounds: int = 20):
        """Close every liquidatable cross wallet and isolated position in `wallets` (those
        just re-checked), re-check exactly the wallets the closes touched (ADL counterparties
        included), and repeat while that makes new liquidations. A close whose money would
        leave int64 is not made (MoneyOverflowError); the others still are, every touched
        wallet is re-checked, and then the first such error is raised."""
        book = self.book
        pos = book.positions
        failed = []
        # ADL ranks positions by their wallets' figures: every wallet's brought up to date first
        queues = liquidation.AdlQueues(book, self.mark, self.state, before_ranking=self.refresh)
        for _ in range(max_rounds):
            closes = liquidation.closes_due(book, self.out, self._flagged(wallets))
            if not len(closes.wallet):
                break
            first = len(self._events)
            failed += liquidation.run_round(book, self.mark, self.fund, closes, queues, self.state, self._events,
                                            self.ts)
            kind, row = self._events.column("kind", first), self._events.column("row", first)
            closed = kind == LIQUIDATION_CLOSE
            # the round's cancellations in one call (order indices stay valid until then)
            self._cancel_orders(liquidation.orders_to_cancel(book, self._events.column("wallet", first)[closed],
                                                             row[closed]))
            touched = row[closed | (kind == ADL_CLOSE)]
            if not len(touched):
                break
            wallets = _distinct(pos.wallet[touched], len(book.wallets))
            self.screen.changed[wallets] = True  # their money moved: the screen's keys no longer hold
            self._recheck(wallets)
        if failed:
            raise failed[0]

    def _cancel_orders(self, rows: np.ndarray) -> None:
        """Cancel resting orders (indices into the book's current orders) through the book."""
        gone = np.zeros(len(self.book.orders), dtype=bool)
        gone[rows] = True
        if gone.any():
            self.book.cancel_orders(gone)
            self._order_origin = self._order_origin[~gone]

    # -- state out ------------------------------------------------------------------------
    @property
    def order_cancelled(self) -> np.ndarray:
        """Per order of the book as loaded: cancelled by a forced close (read-only view of
        the book's cancellations)."""
        cancelled = np.ones(self._n_orders, dtype=bool)
        cancelled[self._order_origin] = False
        return cancelled

    def current_book(self) -> Book:
        """The book as the engine holds it now (positions after forced closes and ADL, money
        after fees, fund payments and ADL, orders cancelled by liquidation removed) with the
        last tick's marks; scanning it gives the engine's figures."""
        return replace(self.book, mark=self.mark.copy())

    def _read_fund(self, table, name: str = "insurance_fund") -> np.ndarray:
        """Units per asset from an (asset, balance) table; errors call it `name` (its file)."""
        fund = np.zeros(len(self.book.assets), dtype=np.int64)
        if table is not None:
            df = as_frame(table, name)
            asset = codes(str_col(df, name, "asset"), self.book.assets, name, "unknown asset")
            require(df, name, "balance")
            order = np.argsort(asset, kind="stable")
            dup = np.flatnonzero(np.diff(asset[order]) == 0)
            if len(dup):
                raise BookError(name, "asset", "asset listed twice", np.sort(order[np.r_[dup, dup + 1]]))
            fund[asset] = to_units(df["balance"], self.book.asset_scale[asset], name)
        return fund

    def events(self, since_seq: int | None = None) -> pl.DataFrame:
        """Every event this engine holds (columns: model §8.2; `seq` numbers them over the
        engine's whole history, a restored engine's first being its snapshot's next), or
        those numbered since_seq and later. Money as exact decimals of the asset."""
        return self._events.frame(self.book, since_seq)

    def event_rows(self, since_seq: int | None = None) -> np.ndarray:
        """Per event of events(since_seq), the book row of its position (−1 for a wallet's
        event): the engine's book has the rows of the book it was given, in that order."""
        return self._events.column("row", self._events.start(since_seq)).copy()

    @property
    def next_seq(self) -> int:
        """The sequence number of the next event."""
        return self._events.next_seq

    def position_figures(self) -> dict[str, np.ndarray]:
        """The engine's per-position figures (upnl, mm, im, fee, notional, isolated flags) in
        book order."""
        self.refresh()
        return self.state.position_figures()

    def adl_ranks(self) -> pl.DataFrame:
        """Per position in book order: `adl_rank` (model §8.5: pnl% × effective leverage in
        profit, ÷ otherwise; null when flat) and `adl_quantile`, 0-4 within the queue of its
        symbol and side (4: the first fifth, deleveraged first, like Binance's adlQuantile;
        null when flat), at the engine's current marks and figures."""
        book = self.book
        self.refresh()
        rank, quantile = liquidation.adl_figures(book, self.mark, self.state)
        flat = quantile < 0
        return pl.DataFrame({
            "account_id": book.wallets.account_id[book.positions.wallet],
            "symbol": pl.Series(list(book.instruments.symbol), dtype=pl.String).gather(book.positions.symbol),
            "position_side": pl.Series(list(SIDES), dtype=pl.String).gather(book.positions.side),
            "adl_rank": pl.Series(rank).set(pl.Series(flat), None),
            "adl_quantile": pl.Series(quantile).set(pl.Series(flat), None)})

    def insurance_fund(self) -> pl.DataFrame:
        return pl.DataFrame({"asset": self.book.assets, "balance": pl.from_arrow(
            units_to_decimal(self.fund, self.book.output_scale, self.book.asset_scale))})


def _distinct(ids: np.ndarray, n: int) -> np.ndarray:
    """The distinct values of ids in [0, n), sorted, as int64 (a mask: no sort or hash)."""
    seen = np.zeros(n, dtype=bool)
    seen[ids] = True
    return np.flatnonzero(seen)
