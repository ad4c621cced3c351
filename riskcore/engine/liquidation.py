"""Forced close, liquidation fee, insurance fund, bankruptcy price and auto-deleveraging
(docs/model.md §8.3-8.5), as functions that read the book and return the money moves of a
close (`CloseMoves`): nothing here changes the book, the fund or the engine's state. The
engine applies a plan with Book.apply_moves (money), Book.cancel_orders (orders, one call per
liquidation round) and one quantity helper (Engine._change_quantities).

Every amount is an exact integer of units; the directed rounding (realized PnL floored, the
fee rounded up, shares of a deficit, the fund's cover of an unmatched quantity) is money.py's.
A plan whose money would leave int64 is refused (MoneyOverflowError naming the rows) before
anything is moved: the close is then not made.
"""

from dataclasses import dataclass, field

import numpy as np

from ..book import Book
from ..errors import MoneyOverflowError
from ..kernels import NOTIONAL, margin_balance
from ..kernels import position_values as kernel_values
from ..money import (INT64_MAX, INT64_MIN, ceil_share, fee_units, int64_parts, realized_units,
                     spread_units)
from .events import ADL_CLOSE, FUND_SHORTFALL, LIQUIDATION_CLOSE
from .state import ranges


@dataclass
class CloseMoves:
    """What one forced close does, in exact units; applying it is the engine's job.

    balance: (wallet ids, int64 units) and isolated_margin: (book rows, int64 units) are
    moves for Book.apply_moves (a target may be named more than once: its moves add up
    exactly); fund: asset → exact change of the insurance fund; qty: (book rows, quantity
    change) in application order; events: (kind, wallet, row, qty, price, realized units,
    fund units) in emission order; cancel: the order indices to cancel (Book.cancel_orders);
    touched: the book rows whose wallets must be re-checked."""
    balance: tuple = field(default_factory=lambda: (np.zeros(0, np.int64), np.zeros(0, np.int64)))
    isolated_margin: tuple = field(default_factory=lambda: (np.zeros(0, np.int64), np.zeros(0, np.int64)))
    fund: dict = field(default_factory=dict)
    qty: tuple = field(default_factory=lambda: (np.zeros(0, np.int64), np.zeros(0)))
    events: list = field(default_factory=list)
    cancel: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    touched: set = field(default_factory=set)

    def money_moved(self) -> int:
        """Σ of every balance, isolated margin and fund change, exactly (model §8.6: equals
        the realized PnL of the close events)."""
        return (sum(int(u) for u in self.balance[1]) + sum(int(u) for u in self.isolated_margin[1])
                + sum(self.fund.values()))

    def realized(self) -> int:
        return sum(int(e[5]) for e in self.events)


def closes_due(book: Book, out, wallets: np.ndarray) -> list:
    """The closes to make among `wallets` (just re-checked), in order: per wallet, each
    liquidatable open isolated position alone, then, if the wallet is liquidatable, all its
    open cross positions together. Returns [(book rows, wallet, isolated)]."""
    pos, start = book.positions, book.wallets.pos_start
    wallets = np.asarray(wallets, dtype=np.int64)
    n = start[wallets + 1] - start[wallets]
    bounds = np.r_[0, np.cumsum(n)]  # wallet k's rows are rows[bounds[k]:bounds[k + 1]]
    owner = np.repeat(np.arange(len(wallets)), n)
    rows = ranges(start[wallets], start[wallets + 1])
    open_ = pos.qty[rows] != 0
    iso = pos.isolated[rows]
    iso_due = iso & out.positions["liquidate"][rows] & open_
    cross_due = ~iso & open_ & out.accounts["liquidate"][wallets][owner]
    closes = []
    for k in np.unique(owner[iso_due | cross_due]):
        w, lo, hi = int(wallets[k]), bounds[k], bounds[k + 1]
        for i in rows[lo:hi][iso_due[lo:hi]]:
            closes.append((np.array([i]), w, True))
        cross = rows[lo:hi][cross_due[lo:hi]]
        if len(cross):
            closes.append((cross, w, False))
    return closes


def position_values(book: Book, mark: np.ndarray, rows) -> tuple[np.ndarray, np.ndarray]:
    """(upnl, notional) of rows at `mark` and their current quantities."""
    pos = book.positions
    return kernel_values(np.asarray(rows, dtype=np.int64), pos.qty, pos.entry_unit, pos.symbol, *book.face_mark(mark))


def bankruptcy_price(book: Book, i: int, realized: float) -> float:
    """The price at which position i's realized PnL equals `realized` (model §8.4: linear in
    P, inverse in 1/P; ∞ when 1/P would not be positive)."""
    pos, inst = book.positions, book.instruments
    s = pos.symbol[i]
    qf = pos.qty[i] * inst.face_value[s]
    if inst.inverse[s]:
        inv = 1.0 / pos.entry_price[i] - realized / qf
        return 1.0 / inv if inv > 0 else np.inf
    return pos.entry_price[i] + realized / qf


def close_amounts(book: Book, mark: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact (realized PnL floored, liquidation fee rounded up) of closing rows at `mark`, in
    units, as settlement computes them."""
    pos, inst = book.positions, book.instruments
    s = pos.symbol[rows]
    scale = book.asset_scale[inst.settle_asset[s]]
    args = (pos.entry_price[rows], inst.face_value[s], inst.inverse[s], mark[s])
    return (realized_units(pos.qty[rows], *args, scale),
            fee_units(pos.qty[rows], *args, inst.liquidation_fee_rate[s], scale))


class CloseAmounts:
    """close_amounts of a liquidation round's rows in one vectorised call, recomputed for
    rows whose quantity an ADL has changed since (a cache: it changes nothing)."""

    def __init__(self, book: Book, mark: np.ndarray):
        self.book, self.mark, self._cache = book, mark, {}

    def prepare(self, rows: np.ndarray) -> None:
        realized, fee = close_amounts(self.book, self.mark, rows)
        qty = self.book.positions.qty[rows]
        self._cache = dict(zip(rows.tolist(), zip(qty.tolist(), realized.tolist(), fee.tolist())))

    def get(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cached = [self._cache.get(i) for i in rows.tolist()]
        if any(c is None or c[0] != q for c, q in zip(cached, self.book.positions.qty[rows].tolist())):
            self.prepare(rows)
            cached = [self._cache[i] for i in rows.tolist()]
        return (np.array([c[1] for c in cached], dtype=np.int64), np.array([c[2] for c in cached], dtype=np.int64))


def plan_adl(book: Book, mark: np.ndarray, state, i: int, price: float):
    """Closing position i's quantity against opposite positions of its symbol in other
    wallets, best ADL rank first (BitMEX: pnl% × effective leverage when in profit, pnl% /
    effective leverage otherwise, from `state`'s figures), each at `price`. Returns
    ([(row, quantity closed)], the quantity left unmatched)."""
    pos = book.positions
    s = pos.symbol[i]
    rows = state.rows_of_symbol(s)
    rows = rows[(pos.qty[rows] * pos.qty[i] < 0) & (pos.wallet[rows] != pos.wallet[i])]
    need = abs(pos.qty[i])
    matches = []
    if len(rows) and need > 0:
        upnl, notional = position_values(book, mark, rows)
        pnl_pct = upnl / (np.abs(pos.qty[rows]) * pos.entry_unit[rows])
        wal = pos.wallet[rows].astype(np.int64)
        # a cross position's margin is its notional share of the account's equity
        cross_notional = state.w_state[wal, NOTIONAL]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            margin = np.where(pos.isolated[rows], margin_balance(pos.isolated_margin[rows], book.symbol_unit[s], upnl),
                              state.out.accounts["equity"][wal] * notional / cross_notional)
            eff = np.where(margin > 0, notional / margin, np.inf)
            rank = np.where(pnl_pct > 0, pnl_pct * eff, pnl_pct / eff)
        for c in rows[np.argsort(-rank, kind="stable")]:
            take = min(need, abs(pos.qty[c]))
            matches.append((int(c), np.copysign(take, pos.qty[c])))
            need -= take
            if need <= 0:
                break
    return matches, need


def orders_to_cancel(book: Book, w: int, symbol=None) -> np.ndarray:
    """Indices of the resting orders cancelled before a forced close: all the wallet's, or
    the wallet's in `symbol` (orders are sorted by wallet)."""
    ords = book.orders
    lo, hi = np.searchsorted(ords.wallet, [w, w + 1])
    rows = np.arange(lo, hi, dtype=np.int64)
    return rows if symbol is None else rows[ords.symbol[lo:hi] == symbol]


def plan_close(book: Book, mark: np.ndarray, fund: np.ndarray, rows: np.ndarray, w: int, isolated: bool,
               amounts: CloseAmounts, state) -> CloseMoves:
    """The moves of closing `rows` (one isolated position, or a wallet's cross positions) at
    the mark (model §8.3).

    Realized PnL rounded down (against the account), the liquidation fee rounded up and
    capped at what is left; a deficit is paid by the fund, or, when the fund cannot, the
    positions are closed against opposite positions (ADL) at their bankruptcy prices so that
    the account ends at exactly zero, each counterparty realizing its exact PnL at that price.
    Every amount is checked against int64 here (MoneyOverflowError: nothing is to be made)."""
    pos, inst = book.positions, book.instruments
    rows = rows[pos.qty[rows] != 0]  # an ADL earlier in this round may have closed some already
    if not len(rows):
        return CloseMoves()
    s_of = pos.symbol[rows]
    asset = int(inst.settle_asset[s_of[0]])
    unit = book.symbol_unit[s_of[0]]
    upnl, notional = position_values(book, mark, rows)  # from current quantities: an ADL may have cut them
    if not np.all(np.abs(upnl / unit) < 2.0**62) or not np.all(np.abs(notional / unit) < 2.0**62):
        raise MoneyOverflowError("engine", "realized_pnl", "a close's PnL exceeds 64-bit fixed point money", rows)
    realized, fee = amounts.get(rows)
    start = int(pos.isolated_margin[rows[0]] if isolated else book.wallets.balance[w])
    left = start + sum(int(r) for r in realized)
    fund_before = int(fund[asset])
    fund_after = fund_before
    credits: dict = {}  # ("margin", row) or ("balance", wallet) -> exact credit from ADL
    events = []
    adl = []            # (row c, quantity closed)
    if left >= 0 or fund_after >= -left:
        fee_paid = min(sum(int(f) for f in fee), max(left, 0))
        fund_delta = fee_paid if left >= 0 else left  # a deficit is paid by the fund
        fund_after += fund_delta
        remaining = max(left, 0) - fee_paid
        shares = spread_units(_fits(fund_delta, rows, "insurance_fund_delta"),
                              fee if left >= 0 else np.ones(len(rows), np.int64))
        for i, r, f in zip(rows, realized, shares):
            events.append((LIQUIDATION_CLOSE, w, i, -pos.qty[i], mark[pos.symbol[i]], int(r), int(f)))
    else:  # bankrupt and the fund cannot pay: auto-deleverage at bankruptcy prices
        deficit = _fits(-left, rows, "realized_pnl")
        share = spread_units(deficit, np.maximum(np.rint(notional / unit), 1).astype(np.int64))
        remaining = 0
        for i, r, u in zip(rows, realized, share):
            r, u = int(r), int(u)
            bankruptcy = bankruptcy_price(book, i, (r + u) * unit)
            events.append((LIQUIDATION_CLOSE, w, i, -pos.qty[i], bankruptcy, r + u, 0))
            matches, unmatched = plan_adl(book, mark, state, i, bankruptcy)
            for (c, closed), gain in zip(matches, _adl_gains(book, matches, bankruptcy)):
                key = ("margin", c) if pos.isolated[c] else ("balance", int(pos.wallet[c]))
                credits[key] = credits.get(key, 0) + gain
                adl.append((c, closed))
                events.append((ADL_CLOSE, pos.wallet[c], c, -closed, bankruptcy, gain, 0))
            if unmatched:  # not enough opposite positions: the fund covers the rest, even below 0
                cover = ceil_share(u, unmatched, abs(pos.qty[i]))
                fund_after -= cover
                events.append((FUND_SHORTFALL, w, i, unmatched, bankruptcy, -cover, -cover))
    new_balance = int(book.wallets.balance[w]) + remaining if isolated else remaining
    for (kind, target), gain in credits.items():
        if kind == "margin":
            _fits(int(pos.isolated_margin[target]) + gain, [target], "isolated_margin")
        else:
            _fits(int(book.wallets.balance[target]) + gain, np.flatnonzero(pos.wallet == target), "balance")
    _fits(fund_after, rows, "insurance_fund")
    _fits(new_balance, rows, "balance")
    for e in events:
        _fits(e[5], [e[2]], "realized_pnl")
        _fits(e[6], [e[2]], "insurance_fund_delta")

    balance = [(w, new_balance - int(book.wallets.balance[w]))]
    margin = [(int(rows[0]), -int(pos.isolated_margin[rows[0]]))] if isolated else []
    for (kind, target), gain in credits.items():
        (margin if kind == "margin" else balance).append((target, gain))
    qty_rows = np.r_[rows, np.array([c for c, _ in adl], dtype=np.int64)].astype(np.int64)
    qty_change = np.r_[-pos.qty[rows], -np.array([q for _, q in adl], dtype=np.float64)]
    touched = set(rows.tolist()) | {int(c) for c, _ in adl}
    return CloseMoves(balance=_moves(balance), isolated_margin=_moves(margin), fund={asset: fund_after - fund_before},
                      qty=(qty_rows, qty_change), events=events,
                      cancel=orders_to_cancel(book, w, s_of[0] if isolated else None), touched=touched)


def _adl_gains(book: Book, matches, price: float) -> list[int]:
    """Each ADL counterparty's realized PnL of its closed quantity at `price`, exact
    (money.realized_units: `price` means the decimal it prints as), like every other close."""
    if not matches:
        return []
    pos, inst = book.positions, book.instruments
    c = np.array([m[0] for m in matches], dtype=np.int64)
    closed = np.array([m[1] for m in matches], dtype=np.float64)
    s = pos.symbol[c]
    f, inverse, unit = inst.face_value[s], inst.inverse[s], book.symbol_unit[s]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        estimate = closed * f * np.where(inverse, 1.0 / pos.entry_price[c] - 1.0 / price, price - pos.entry_price[c])
    big = ~(np.abs(estimate / unit) < 0.999 * 2.0**62)  # beyond what exact_amounts takes
    if big.any():  # no int64 account could take it: refused like the credit it would be
        k = int(np.argmax(big))
        if pos.isolated[c[k]]:
            raise _overflow("isolated_margin", [int(c[k])])
        raise _overflow("balance", np.flatnonzero(pos.wallet == pos.wallet[c[k]]))
    scale = book.asset_scale[inst.settle_asset[s]]
    return [int(g) for g in realized_units(closed, pos.entry_price[c], f, inverse, np.full(len(c), price), scale)]


def _moves(pairs) -> tuple[np.ndarray, np.ndarray]:
    """(ids, int64 units) for Book.apply_moves from (id, exact int) pairs, an amount beyond
    int64 split into int64 parts that add up to it."""
    ids, units = [], []
    for target, amount in pairs:
        for part in int64_parts(amount):
            ids.append(int(target))
            units.append(part)
    return np.array(ids, dtype=np.int64), np.array(units, dtype=np.int64)


def _overflow(what: str, rows) -> MoneyOverflowError:
    return MoneyOverflowError("engine", what, "a forced close would take money beyond 64-bit fixed point "
                                              "(±(2^63 − 1) units); the close was not made", rows)


def _fits(units: int, rows, what: str) -> int:
    """`units` (an exact int) if it is int64 money; else MoneyOverflowError naming `what`
    and the book's position rows involved."""
    if not INT64_MIN <= units <= INT64_MAX:
        raise _overflow(what, rows)
    return units
