"""The tick engine (docs/model.md §8): holds a book, re-checks only what each mark update can change,
reports liquidations edge-triggered, and optionally executes them (forced close, liquidation
fee to the insurance fund, bankruptcy paid by the fund, auto-deleveraging when it cannot).

Cost per tick grows with the positions of the changed symbols and the wallets holding them:
indexes symbol → rows and symbol → wallets are built once, and the scan kernels run on just
those rows and wallets, writing into the engine's figure buffers in place.
"""

from copy import deepcopy
from dataclasses import replace

import numpy as np
import polars as pl

from .book import SIDES, Book, order_margins
from .errors import BookError, MoneyOverflowError, check
from .money import INT64_MAX, INT64_MIN, exact_amounts, to_units, units_to_decimal
from .kernels import NOTIONAL, WALLET_STATE, tick_rows, tick_wallets
from .scan import ACCOUNT_FIGURES, ScanArrays, scan_into
from .tables import as_float64, as_frame, categorical, codes, require, str_col

EVENT_KINDS = ("account_liquidatable", "position_liquidatable", "liquidation_close", "adl_close",
               "insurance_fund_shortfall")
ACCOUNT_LIQUIDATABLE, POSITION_LIQUIDATABLE, LIQUIDATION_CLOSE, ADL_CLOSE, FUND_SHORTFALL = range(5)
RESYNC_EVERY = 10_000  # ticks between exact recomputations of the running sums
FULL_SCAN_SHARE = 0.3  # a tick touching more of the book than this is an exact parallel full scan


class TickError(BookError):
    """A bad tick (unknown symbol, NaN or non-positive price, time going backwards): nothing applied."""


class Engine:
    """Stateful risk engine over a book.

    `liquidate=True` executes forced closes as liquidations appear (the engine then owns a
    copy of the book and mutates it). `insurance_fund` is a table (`asset`, `balance`), absent
    = 0 in every asset. `resync_every` ticks the running sums are recomputed exactly.

    State: the account figures in `out.accounts` (by wallet id), kept current every tick;
    the per-position figures symbol-major (`position_figures()` gives them in book order).
    """

    def __init__(self, book: Book, marks=None, *, liquidate: bool = False, insurance_fund=None,
                 resync_every: int = RESYNC_EVERY, fund_name: str = "insurance_fund"):
        self.book = deepcopy(book) if liquidate else book
        book = self.book
        mark = book.mark if marks is None else book.read_marks(marks)[0]
        book.check_marks(mark, None if marks is None else "marks")
        self.mark = mark.copy()
        self.execute = liquidate
        self.resync_every = resync_every
        self._ticks = 0
        self.fund = self._read_fund(insurance_fund, fund_name)
        self.ts = None
        pos, n_sym = book.positions, len(book.instruments)
        by_symbol = np.argsort(pos.symbol, kind="stable")
        self._sym_rows = by_symbol.astype(np.int64)
        self._sym_row_start = np.searchsorted(pos.symbol[by_symbol], np.arange(n_sym + 1))
        pairs = np.unique(pos.symbol.astype(np.int64) * len(book.wallets) + pos.wallet)
        self._sym_wallets = (pairs % max(len(book.wallets), 1)).astype(np.int64)
        self._sym_wallet_start = np.searchsorted(pairs // max(len(book.wallets), 1), np.arange(n_sym + 1))
        n_w = len(book.wallets)
        self._accounts = np.zeros((n_w, len(ACCOUNT_FIGURES)))  # one row per wallet: see tick_wallets
        self.out = ScanArrays.empty(len(pos), n_w, packed_accounts=self._accounts)
        self.order_cancelled = np.zeros(len(book.orders), dtype=bool)
        self._events: list[dict] = []
        self._w_state = np.zeros((n_w, WALLET_STATE))
        perm = self._sym_rows
        self._row_of = np.empty(len(pos), dtype=np.int64)  # book row → symbol-major index
        self._row_of[perm] = np.arange(len(pos))
        self._s = {name: getattr(pos, name)[perm].copy() for name in
                   ("symbol", "qty", "entry_unit", "inv_leverage", "isolated", "isolated_margin")}
        self._s["wallet"] = pos.wallet[perm].astype(np.int64)
        self._s.update({name: np.zeros(len(pos)) for name in ("upnl", "mm", "im", "fee", "notional")})
        self._s["liquidate"] = np.zeros(len(pos), dtype=bool)
        self._stale = np.zeros(len(book.instruments), dtype=bool)
        self._became = np.zeros(len(pos), dtype=bool)           # scratch: rows that became liquidatable
        self._became_wallets = np.zeros(n_w, dtype=bool)        # scratch: wallets that did
        self._close_amounts: dict = {}                          # row -> (qty, realized, fee) this round
        self._resync()
        # what is liquidatable at load is reported once, with no timestamp
        self._report_accounts(np.arange(n_w), np.zeros(n_w, bool))
        iso = np.flatnonzero(pos.isolated)
        self._report_positions(iso, np.zeros(len(iso), bool))
        if liquidate:
            self._liquidate(np.arange(n_w))

    # -- ticks ---------------------------------------------------------------------------
    def on_marks(self, symbols, prices, ts=None) -> int:
        """Apply one tick of symbol names and prices; returns how many events it produced
        (see `events()`). A bad tick raises TickError and changes nothing."""
        return self.on_symbol_marks(self.symbol_ids(symbols, ts), prices, ts)

    def symbol_ids(self, symbols, ts=None) -> np.ndarray:
        """Dense ids of symbol names (TickError naming the unknown ones)."""
        table = "tick" if ts is None else f"tick at {ts}"
        symbols = symbols if isinstance(symbols, pl.Series) else pl.Series("symbol", list(symbols), dtype=pl.String)
        try:
            return codes(symbols.cast(pl.String).alias("symbol"), self.book.instruments.symbol, table,
                         "unknown symbol").astype(np.int64)
        except BookError as e:
            raise TickError(e.table, e.column, e.problem, e.rows) from None

    def on_symbol_marks(self, sym: np.ndarray, prices, ts=None) -> int:
        """on_marks with symbols given as dense ids (the replay loop's fast path)."""
        sym, price = self._check_tick(sym, prices, ts)
        self.mark[sym] = price
        self.ts = ts if ts is not None else self.ts
        n_before = len(self._events)
        sym = np.sort(sym)
        starts, ends = self._sym_row_start[sym], self._sym_row_start[sym + 1]
        self._ticks += 1
        pos, p = self.book.positions, self.out.positions
        if (ends - starts).sum() > FULL_SCAN_SHARE * len(pos) or self._ticks % self.resync_every == 0:
            # most of the book moved: an exact parallel scan in book order; the symbol-major
            # copies go stale and are refreshed symbol by symbol when a small tick needs them
            iso = np.flatnonzero(pos.isolated)
            old_acct, old_iso = self.out.accounts["liquidate"].copy(), p["liquidate"][iso]
            scan_into(self.book, self.mark, self.out, with_liq_price=False, sums=self._w_state)
            self._stale[:] = True
            wallets = np.arange(len(self.book.wallets))
            self._report_accounts(wallets, old_acct)
            self._report_positions(iso, old_iso)
        else:
            self._refresh_stale(sym[self._stale[sym]])
            wallets = self._wallets_of_symbols(sym)
            face_mark, direction = self.book.face_mark(self.mark)
            s, inst = self._s, self.book.instruments
            tick_rows(starts, ends, s["symbol"], s["qty"], s["entry_unit"], s["inv_leverage"], s["isolated"],
                      s["isolated_margin"], s["wallet"], self.book.symbol_unit, face_mark, direction,
                      inst.taker_fee_rate, inst.mm_im_fraction, inst.tier_start, inst.tier_floor, inst.tier_mmr,
                      inst.tier_cum, s["upnl"], s["mm"], s["im"], s["fee"], s["notional"], s["liquidate"],
                      self._w_state, self._sym_rows, p["liquidate"], self._became)
            became = self._became_wallets[:len(wallets)]
            tick_wallets(wallets, self._w_state, self._accounts, self.out.accounts["liquidate"], became)
            for w in wallets[became]:
                self._account_event(w)
            for a, b in zip(starts, ends):
                for j in a + np.flatnonzero(self._became[a:b]):
                    self._position_event(self._sym_rows[j])
        if self.execute:
            self._liquidate(wallets)
        return len(self._events) - n_before

    def _refresh_stale(self, symbols):
        """Bring the symbol-major figures of `symbols` up to date from the book-order ones."""
        p, s = self.out.positions, self._s
        for sym in symbols:
            lo, hi = self._sym_row_start[sym], self._sym_row_start[sym + 1]
            rows = self._sym_rows[lo:hi]
            for name in ("upnl", "mm", "im", "fee", "notional", "liquidate"):
                s[name][lo:hi] = p[name][rows]
            s["liquidate"][lo:hi] &= s["isolated"][lo:hi]
            self._stale[sym] = False

    def _resync(self, wallets=None):
        """Recompute exactly (no running sums) the given wallets, or everything: book-order
        figures by the scan kernels, then the symbol-major copy and the wallets' sums."""
        pos = self.book.positions
        if wallets is None:
            rows = None
        else:
            lo, hi = self.book.wallets.pos_start[wallets], self.book.wallets.pos_start[wallets + 1]
            rows = _ranges(lo, hi)
        scan_into(self.book, self.mark, self.out, with_liq_price=False, rows=rows, wallets=wallets, sums=self._w_state)
        p, s = self.out.positions, self._s
        if rows is None:  # everything: gather into symbol-major order
            perm = self._sym_rows
            for name in ("qty", "isolated", "isolated_margin", "entry_unit", "inv_leverage"):
                np.take(getattr(pos, name), perm, out=s[name])
            for name in ("upnl", "mm", "im", "fee", "notional"):
                np.take(p[name], perm, out=s[name])
            np.take(p["liquidate"] & pos.isolated, perm, out=s["liquidate"])
            self._stale[:] = False
            return
        j = self._row_of[rows]
        for name in ("qty", "isolated", "isolated_margin", "entry_unit", "inv_leverage"):
            s[name][j] = getattr(pos, name)[rows]
        for name in ("upnl", "mm", "im", "fee", "notional"):
            s[name][j] = p[name][rows]
        s["liquidate"][j] = p["liquidate"][rows] & pos.isolated[rows]

    def _wallets_of_symbols(self, sym):
        wlo, whi = self._sym_wallet_start[sym], self._sym_wallet_start[sym + 1]
        if len(sym) == 1:
            return self._sym_wallets[wlo[0]:whi[0]]
        return np.unique(np.concatenate([self._sym_wallets[a:b] for a, b in zip(wlo, whi)]))

    def _check_tick(self, sym, prices, ts):
        table = "tick" if ts is None else f"tick at {ts}"
        sym = np.asarray(sym, dtype=np.int64)
        price = np.asarray(prices, dtype=np.float64)
        if len(price) != len(sym):
            raise TickError(table, "mark_price", "one price per symbol expected")
        bad = np.flatnonzero(~(np.isfinite(price) & (price > 0)))
        if len(bad):
            raise TickError(table, "mark_price", "price must be finite and positive", bad)
        if len(np.unique(sym)) != len(sym):
            raise TickError(table, "symbol", "symbol twice in one tick")
        if ts is not None and self.ts is not None and ts < self.ts:
            raise TickError(table, "ts", f"time goes backwards (last tick at {self.ts})")
        return sym, price

    def _report_accounts(self, wallets, old):
        """Events for wallets that became liquidatable (edge-triggered: again only after recovery)."""
        for w in wallets[self.out.accounts["liquidate"][wallets] & ~old]:
            self._account_event(w)

    def _report_positions(self, rows, old):
        """Events for isolated positions (book rows) that became liquidatable."""
        for i in rows[self.out.positions["liquidate"][rows] & ~old]:
            self._position_event(i)

    def _account_event(self, w):
        a = self.out.accounts
        self._event(ACCOUNT_LIQUIDATABLE, w, -1, equity=a["equity"][w], mm=a["cross_mm"][w],
                    risk_ratio=a["risk_ratio"][w])

    def _position_event(self, i):
        pos = self.book.positions
        f = self._row_figures(i)
        margin_balance = pos.isolated_margin[i] * self.book.symbol_unit[pos.symbol[i]] + f["upnl"]
        risk = (f["mm"] + f["fee"]) / margin_balance if margin_balance > 0 else np.inf
        self._event(POSITION_LIQUIDATABLE, pos.wallet[i], i, qty=pos.qty[i], price=self.mark[pos.symbol[i]],
                    equity=margin_balance, mm=f["mm"], risk_ratio=risk)

    def _row_figures(self, i) -> dict:
        """Current figures of book row i, from whichever order holds them."""
        if self._stale[self.book.positions.symbol[i]]:
            return {name: self.out.positions[name][i] for name in ("upnl", "mm", "fee", "notional")}
        j = self._row_of[i]
        return {name: self._s[name][j] for name in ("upnl", "mm", "fee", "notional")}

    def _event(self, kind, wallet, row, qty=np.nan, price=np.nan, realized=0, fund=0, equity=np.nan,
               mm=np.nan, risk_ratio=np.nan):
        self._events.append(dict(ts=self.ts, kind=kind, wallet=int(wallet), row=int(row), qty=qty, price=price,
                                 realized=int(realized), fund=int(fund), equity=equity, mm=mm,
                                 risk_ratio=risk_ratio))

    # -- forced liquidation ---------------------------------------------------------------
    def _liquidate(self, wallets, max_rounds: int = 20):
        """Close every liquidatable cross wallet and isolated position in `wallets` (those
        just re-checked), re-check exactly the wallets the closes touched (ADL counterparties
        included), and repeat while that makes new liquidations. A close whose money would
        leave int64 is not made (MoneyOverflowError); the others still are, every touched
        wallet is re-checked, and then the first such error is raised."""
        book, a, p = self.book, self.out.accounts, self.out.positions
        pos = book.positions
        failed = []
        for _ in range(max_rounds):
            closes = []  # (rows, wallet, isolated): isolated positions first within a wallet
            for w in wallets:
                start, end = book.wallets.pos_start[w], book.wallets.pos_start[w + 1]
                rows = np.arange(start, end)
                for i in rows[pos.isolated[start:end] & p["liquidate"][start:end] & (pos.qty[start:end] != 0)]:
                    closes.append((np.array([i]), w, True))
                if a["liquidate"][w]:
                    cross = rows[~pos.isolated[start:end] & (pos.qty[start:end] != 0)]
                    if len(cross):
                        closes.append((cross, w, False))
            if closes:  # every close's exact amounts in one vectorised call
                self._amounts_for(np.concatenate([r for r, _, _ in closes]))
            touched: set[int] = set()
            for rows, w, isolated in closes:
                try:
                    touched |= self._close(rows, w, isolated)
                except MoneyOverflowError as e:  # nothing of this close was made
                    failed.append(e)
            if not touched:
                break
            rows = np.array(sorted(touched), dtype=np.int64)
            wallets = np.unique(pos.wallet[rows]).astype(np.int64)
            lo, hi = book.wallets.pos_start[wallets], book.wallets.pos_start[wallets + 1]
            all_rows = _ranges(lo, hi)
            iso = all_rows[pos.isolated[all_rows]]
            old_acct, old_iso = a["liquidate"][wallets].copy(), p["liquidate"][iso].copy()
            self._resync(wallets)
            self._report_accounts(wallets, old_acct)
            self._report_positions(iso, old_iso)
        if failed:
            raise failed[0]

    def _close(self, rows, w, isolated: bool) -> set[int]:
        """Close `rows` (one isolated position, or a wallet's cross positions) at the mark.

        Money in exact units: realized PnL rounded down (against the account), the
        liquidation fee rounded up and capped at what is left; a deficit is paid by the fund,
        or, when the fund cannot, the positions are closed against opposite positions (ADL)
        at their bankruptcy prices so that the account ends at exactly zero.
        """
        book = self.book
        pos, inst = book.positions, book.instruments
        rows = rows[pos.qty[rows] != 0]  # an ADL earlier in this round may have closed some already
        if not len(rows):
            return set()
        s_of = pos.symbol[rows]
        asset = inst.settle_asset[s_of[0]]
        unit = book.symbol_unit[s_of[0]]
        upnl, notional = self._value(rows)  # from current quantities: an ADL may have cut them
        if not np.all(np.abs(upnl / unit) < 2.0**62) or not np.all(np.abs(notional / unit) < 2.0**62):
            raise MoneyOverflowError("engine", "realized_pnl", "a close's PnL exceeds 64-bit fixed point money",
                                     rows)
        realized, fee = self._amounts(rows)
        # Every amount is worked out in exact integers and checked against int64 before
        # anything (orders, fund, margins, balances, events) is touched.
        start = int(pos.isolated_margin[rows[0]] if isolated else book.wallets.balance[w])
        left = start + sum(int(r) for r in realized)
        fund = int(self.fund[asset])
        credits: dict = {}  # ("margin", row) or ("balance", wallet) -> exact credit from ADL
        events = []         # (kind, wallet, row, qty, price, realized, fund), in emission order
        adl = []            # (row c, quantity closed)
        if left >= 0 or fund >= -left:
            fee_paid = min(sum(int(f) for f in fee), max(left, 0))
            fund_delta = fee_paid if left >= 0 else left  # a deficit is paid by the fund
            fund += fund_delta
            remaining = max(left, 0) - fee_paid
            shares = _spread(_fits(fund_delta, rows, "insurance_fund_delta"), fee if left >= 0 else np.ones(len(rows), np.int64))
            for i, r, f in zip(rows, realized, shares):
                events.append((LIQUIDATION_CLOSE, w, i, -pos.qty[i], self.mark[pos.symbol[i]], int(r), int(f)))
        else:  # bankrupt and the fund cannot pay: auto-deleverage at bankruptcy prices
            deficit = _fits(-left, rows, "realized_pnl")
            share = _spread(deficit, np.maximum(np.rint(notional / unit), 1).astype(np.int64))
            remaining = 0
            for i, r, u in zip(rows, realized, share):
                r, u = int(r), int(u)
                bankruptcy = self._bankruptcy_price(i, (r + u) * unit)
                events.append((LIQUIDATION_CLOSE, w, i, -pos.qty[i], bankruptcy, r + u, 0))
                matches, unmatched = self._adl(i, bankruptcy)
                for c, closed, gain in matches:
                    key = ("margin", c) if pos.isolated[c] else ("balance", int(pos.wallet[c]))
                    credits[key] = credits.get(key, 0) + gain
                    adl.append((c, closed))
                    events.append((ADL_CLOSE, pos.wallet[c], c, -closed, bankruptcy, gain, 0))
                if unmatched:  # not enough opposite positions: the fund covers the rest, even below 0
                    cover = int(np.ceil(u * unmatched / abs(pos.qty[i])))
                    fund -= cover
                    events.append((FUND_SHORTFALL, w, i, unmatched, bankruptcy, -cover, -cover))
        new_balance = int(book.wallets.balance[w]) + remaining if isolated else remaining
        for key, gain in credits.items():
            base = pos.isolated_margin[key[1]] if key[0] == "margin" else book.wallets.balance[key[1]]
            credits[key] = (_fits(int(base) + gain, [key[1]], "isolated_margin") if key[0] == "margin" else
                            _fits(int(base) + gain, np.flatnonzero(pos.wallet == key[1]), "balance"))
        _fits(fund, rows, "insurance_fund")
        _fits(new_balance, rows, "balance")
        for e in events:
            _fits(e[5], [e[2]], "realized_pnl")
            _fits(e[6], [e[2]], "insurance_fund_delta")

        self._cancel_orders(w, s_of[0] if isolated else None)
        self.fund[asset] = fund
        for kind, wallet, i, qty, price, r, f in events:
            self._event(kind, wallet, i, qty=qty, price=price, realized=r, fund=f)
        for key, value in credits.items():
            if key[0] == "margin":
                pos.isolated_margin[key[1]] = value
            else:
                book.wallets.balance[key[1]] = value
        touched = set(rows.tolist())
        for c, closed in adl:
            pos.qty[c] -= closed
            touched.add(int(c))
        if isolated:
            pos.isolated_margin[rows[0]] = 0
        book.wallets.balance[w] = new_balance
        pos.qty[rows] = 0.0
        return touched

    def _amounts_for(self, rows):
        """Exact (realized PnL, liquidation fee) of rows at the current marks, to the unit, as
        settlement computes them: realized floored, the fee rounded up (−floor(−fee))."""
        book = self.book
        pos, inst = book.positions, book.instruments
        s = pos.symbol[rows]
        args = (pos.entry_price[rows], inst.face_value[s], inst.inverse[s], self.mark[s])
        scale = book.asset_scale[inst.settle_asset[s]]
        realized = exact_amounts("realize", pos.qty[rows], *args, 0.0, scale)
        fee = -exact_amounts("funding", np.abs(pos.qty[rows]), *args, inst.liquidation_fee_rate[s], scale)
        self._close_amounts = dict(zip(rows.tolist(), zip(pos.qty[rows].tolist(), realized.tolist(), fee.tolist())))

    def _amounts(self, rows):
        """The precomputed amounts of rows, recomputed where an ADL has changed a quantity since."""
        cached = [self._close_amounts.get(i) for i in rows.tolist()]
        if any(c is None or c[0] != q for c, q in zip(cached, self.book.positions.qty[rows].tolist())):
            self._amounts_for(rows)
            cached = [self._close_amounts[i] for i in rows.tolist()]
        return (np.array([c[1] for c in cached], dtype=np.int64), np.array([c[2] for c in cached], dtype=np.int64))

    def _value(self, rows):
        """(upnl, notional) of rows at the current marks and quantities."""
        pos = self.book.positions
        s = pos.symbol[rows]
        face_mark, direction = self.book.face_mark(self.mark)
        q = pos.qty[rows]
        return direction[s] * q * (face_mark[s] - pos.entry_unit[rows]), np.abs(q) * face_mark[s]

    def _bankruptcy_price(self, i, realized):
        """The price at which position i's realized PnL equals `realized` (linear in P or 1/P)."""
        pos, inst = self.book.positions, self.book.instruments
        s = pos.symbol[i]
        qf = pos.qty[i] * inst.face_value[s]
        if inst.inverse[s]:
            inv = 1.0 / pos.entry_price[i] - realized / qf
            return 1.0 / inv if inv > 0 else np.inf
        return pos.entry_price[i] + realized / qf

    def _adl(self, i, price):
        """Plan closing position i's quantity against opposite positions of its symbol, best
        ADL rank first (BitMEX: pnl% × effective leverage when in profit, pnl% / effective
        leverage otherwise), at `price`. Changes nothing: returns ([(row, quantity closed,
        realized units as an exact int)], the quantity left unmatched); _close applies them."""
        book, a = self.book, self.out.accounts
        pos, inst = book.positions, book.instruments
        s = pos.symbol[i]
        rows = self._sym_rows[self._sym_row_start[s]:self._sym_row_start[s + 1]]
        rows = rows[(pos.qty[rows] * pos.qty[i] < 0) & (pos.wallet[rows] != pos.wallet[i])]
        need = abs(pos.qty[i])
        matches = []
        if len(rows) and need > 0:
            upnl, notional = self._value(rows)
            pnl_pct = upnl / (np.abs(pos.qty[rows]) * pos.entry_unit[rows])
            wal = pos.wallet[rows].astype(np.int64)
            # a cross position's margin is its notional share of the account's equity
            cross_notional = self._w_state[wal, NOTIONAL]
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                margin = np.where(pos.isolated[rows], pos.isolated_margin[rows] * book.symbol_unit[s] + upnl,
                                  a["equity"][wal] * notional / cross_notional)
                eff = np.where(margin > 0, notional / margin, np.inf)
                rank = np.where(pnl_pct > 0, pnl_pct * eff, pnl_pct / eff)
            for c in rows[np.argsort(-rank, kind="stable")]:
                take = min(need, abs(pos.qty[c]))
                closed = np.copysign(take, pos.qty[c])
                face = inst.face_value[s]
                gain = closed * face * ((1.0 / pos.entry_price[c] - 1.0 / price) if inst.inverse[s]
                                        else (price - pos.entry_price[c]))
                matches.append((int(c), closed, int(np.floor(gain / book.symbol_unit[s]))))
                need -= take
                if need <= 0:
                    break
        return matches, need

    def _cancel_orders(self, w, symbol):
        """Resting orders are cancelled before a forced close (the wallet's, or the symbol's)."""
        ords = self.book.orders
        lo, hi = np.searchsorted(ords.wallet, [w, w + 1])  # orders are sorted by wallet
        if hi > lo:
            in_wallet = np.arange(lo, hi)
            if symbol is not None:
                in_wallet = in_wallet[ords.symbol[lo:hi] == symbol]
            self.order_cancelled[in_wallet] = True
            live = np.arange(lo, hi)[~self.order_cancelled[lo:hi]]
            self.book.wallets.order_margin[w] = float(order_margins(ords, self.book.instruments, live).sum())

    # -- state out ------------------------------------------------------------------------
    def current_book(self) -> Book:
        """The book as the engine holds it now: positions after forced closes and ADL, money
        after fees, fund payments and ADL, orders cancelled by liquidation removed, and the
        last tick's marks; scanning it gives the engine's figures."""
        live = ~self.order_cancelled
        return replace(self.book, orders=self.book.orders.take(live), mark=self.mark.copy())

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

    def events(self) -> pl.DataFrame:
        """Every event so far (columns: model §8.2), money as exact decimals of the asset."""
        book, ev = self.book, self._events
        wal = np.array([e["wallet"] for e in ev], dtype=np.int64)
        row = np.array([e["row"] for e in ev], dtype=np.int64)
        has_row = row >= 0
        r = np.where(has_row, row, 0)
        asset = book.wallets.asset[wal] if len(ev) else np.zeros(0, np.int32)
        scale = int(book.asset_scale.max()) if len(book.asset_scale) else 8

        def money(key):
            return pl.from_arrow(units_to_decimal(np.array([e[key] for e in ev], dtype=np.int64), scale,
                                                  book.asset_scale[asset]))

        symbols = np.array(book.instruments.symbol, dtype=object)[book.positions.symbol[r]]
        sides = np.array(SIDES, dtype=object)[book.positions.side[r]]
        return pl.DataFrame({
            "ts": pl.Series([_plain(e["ts"]) for e in ev]),
            "kind": categorical(np.array([e["kind"] for e in ev], dtype=np.int32), EVENT_KINDS),
            "account_id": book.wallets.account_id[wal], "asset": categorical(asset, book.assets),
            "symbol": pl.Series(np.where(has_row, symbols, None).tolist(), dtype=pl.String),
            "position_side": pl.Series(np.where(has_row, sides, None).tolist(), dtype=pl.String),
            "qty": np.array([e["qty"] for e in ev], dtype=np.float64),
            "price": np.array([e["price"] for e in ev], dtype=np.float64),
            "realized_pnl": money("realized"), "insurance_fund_delta": money("fund"),
            "equity": np.array([e["equity"] for e in ev], dtype=np.float64),
            "mm": np.array([e["mm"] for e in ev], dtype=np.float64),
            "risk_ratio": np.array([e["risk_ratio"] for e in ev], dtype=np.float64),
        })

    def position_figures(self) -> dict[str, np.ndarray]:
        """The engine's per-position figures (upnl, mm, im, fee, notional, isolated flags) in
        book order."""
        self._refresh_stale(np.flatnonzero(self._stale))
        return {name: self._s[name][self._row_of] for name in ("upnl", "mm", "im", "fee", "notional", "liquidate")}

    def insurance_fund(self) -> pl.DataFrame:
        scale = int(self.book.asset_scale.max()) if len(self.book.asset_scale) else 8
        return pl.DataFrame({"asset": self.book.assets,
                             "balance": pl.from_arrow(units_to_decimal(self.fund, scale, self.book.asset_scale))})


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
    index = {s: i for i, s in enumerate(book.instruments.symbol)}
    sym = names.replace_strict(index, default=-1, return_dtype=pl.Int64).to_numpy()
    return ts, sym, price, names


def _ranges(lo, hi) -> np.ndarray:
    """The integers of [lo[k], hi[k]) for every k, concatenated."""
    return np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if len(lo) else np.zeros(0, np.int64)


def _plain(ts):
    """numpy scalars (datetime64, int64) as Python values, so polars can type the column."""
    if isinstance(ts, np.datetime64):
        return ts.astype("datetime64[us]").item()
    return ts.item() if isinstance(ts, np.generic) else ts


def _fits(units: int, rows, what: str) -> int:
    """`units` (an exact int) if it is int64 money; else MoneyOverflowError naming `what`
    and the book's position rows involved."""
    if not INT64_MIN <= units <= INT64_MAX:
        raise MoneyOverflowError("engine", what,
                                 "a forced close would take money beyond 64-bit fixed point "
                                 "(±(2^63 − 1) units); the close was not made", rows)
    return units


def _spread(total: int, weights: np.ndarray) -> np.ndarray:
    """Split an integer amount over rows in proportion to weights, exactly (remainder to the largest)."""
    if abs(total) >= 2**52 and len(weights) and np.sum(np.asarray(weights, dtype=np.float64)) > 0:
        # float shares could round past the total (or int64): exact integer shares instead
        w = [int(x) for x in np.asarray(weights, dtype=np.int64)]
        whole = sum(w)
        out = [total * x // whole for x in w]
        out[int(np.argmax(w))] += total - sum(out)
        return np.array(out, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    if total == 0 or weights.sum() <= 0:
        out = np.zeros(len(weights), np.int64)
        if total and len(out):
            out[0] = total
        return out
    out = np.floor(total * weights / weights.sum()).astype(np.int64)
    out[np.argmax(weights)] += total - out.sum()
    return out
