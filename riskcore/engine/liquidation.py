"""Forced close, liquidation fee, insurance fund, bankruptcy price and auto-deleveraging
(docs/model.md §8.3-8.5).

A liquidation round (`run_round`) makes the closes due in order, each planned whole before
any of it is applied: realized PnL floored and the fee rounded up (exact units), the fee or
the deficit to the insurance fund, or, when the fund cannot pay, the bankrupt positions
closed at their bankruptcy prices against the symbol's ADL queue. Two planners make one
close, with the same rules on the same numbers:

- `_run_closes`, compiled, makes a round's closes in one pass: exact amounts by money.py's
  certified fast paths, every integer of the close certified to stay far inside int64;
- `plan_close`, in Python integers, makes the close the pass cannot certify (an amount only
  Decimal decides, money near the int64 limits, a deficit beyond 2^52 units, an inverse
  bankruptcy price at infinity) and refuses, MoneyOverflowError naming the rows, a close
  whose money would leave int64: that close is then not made.

The ADL queue of a symbol and side (`AdlQueues`) is ranked once per tick, from the figures
at the start of its liquidation (BitMEX's rank: pnl% × effective leverage in profit, pnl% ÷
effective leverage otherwise; ties in book order), and consumed from its head through the
tick's rounds, so each counterparty costs amortised O(1); a counterparty closed in part
keeps its place.
"""

from collections import namedtuple
from dataclasses import dataclass, field

import numpy as np
from numba import njit, objmode

from ..book import Book
from ..config import JIT_EXACT
from ..errors import MoneyOverflowError
from ..kernels import NOTIONAL, position_value
from ..kernels import position_values as kernel_values
from ..money import (INT64_MAX, INT64_MIN, add_places, ceil_share, decimal_amount, decimal_places, fee_units,
                     float_places, int64_parts, realized_units, row_amount, spread_float, spread_units)
from .events import ADL_CLOSE, FUND_SHORTFALL, LIQUIDATION_CLOSE
from .state import ranges

# what _run_closes stopped on
DONE, GENERAL, GROW, RANK = 0, 1, 2, 3
REALIZE, FEE = 0, 1  # the amounts of a close (_amount)
# every integer of a close the compiled pass makes stays below this (far inside int64)
_CERTIFIED = 2.0**61
_SPREAD_FLOAT = 2**52  # spread_float's totals (money.spread_units)
_WITH_GIL = dict(JIT_EXACT, nogil=False)  # the Decimal path runs in object mode, which needs the GIL

Closes = namedtuple("Closes", "start rows wallet isolated")  # close k: rows[start[k]:start[k + 1]] of wallet[k]
_Book = namedtuple("_Book", "qty entry_price entry_unit symbol wallet isolated isolated_margin balance fund")
_Symbols = namedtuple("_Symbols", "face inverse settle_asset liq_fee_rate scale unit mark face_mark direction "
                                  "face_places mark_places fee_places fee_numer_places")
_Queues = namedtuple("_Queues", "queue rank lo hi head built sym_rows row_start equity cross_notional ready")
_Log = namedtuple("_Log", "kind wallet row qty price realized fund equity mm risk_ratio")


def closes_due(book: Book, out, wallets: np.ndarray) -> Closes:
    """The closes to make among `wallets` (just re-checked), in order: per wallet, each
    liquidatable open isolated position alone, then, if the wallet is liquidatable, all its
    open cross positions together."""
    pos, start = book.positions, book.wallets.pos_start
    wallets = np.asarray(wallets, dtype=np.int64)
    n = start[wallets + 1] - start[wallets]
    owner = np.repeat(np.arange(len(wallets)), n)
    rows = ranges(start[wallets], start[wallets + 1])
    open_ = pos.qty[rows] != 0
    iso = pos.isolated[rows]
    iso_due = iso & out.positions["liquidate"][rows] & open_
    cross_due = ~iso & open_ & out.accounts["liquidate"][wallets][owner]
    due = np.flatnonzero(iso_due | cross_due)
    # within a wallet its isolated closes first (book order), then its cross close
    due = due[np.lexsort((due, cross_due[due], owner[due]))]
    cross, k = cross_due[due], owner[due]
    new = ~cross | np.r_[True, (k[1:] != k[:-1]) | ~cross[:-1]]
    first = np.flatnonzero(new)
    return Closes(np.r_[first, len(due)].astype(np.int64), rows[due], wallets[k[first]], ~cross[first])


class AdlQueues:
    """Per symbol and side, the open positions ranked for auto-deleveraging (`_build_queue`)
    from the wallet figures as they stand when the tick's liquidation first needs one
    (`prepare`: `before_ranking` brings every wallet's figures up to date, then they are
    copied here), consumed by both planners through the tick's rounds. A symbol's queue is
    built when it is first needed, which gives the ranks it would have had then: until then
    only the symbol's own closes have changed its positions (leaving them closed)."""

    def __init__(self, book: Book, mark: np.ndarray, state, before_ranking=lambda: None):
        n_sym = len(book.instruments)
        self.face_mark, self.direction = book.face_mark(mark)
        self.arrays = _Queues(np.empty(len(book.positions), np.int64), np.empty(len(book.positions)),
                              np.zeros((n_sym, 2), np.int64),
                              np.zeros((n_sym, 2), np.int64), np.zeros((n_sym, 2), np.int64),
                              np.zeros(n_sym, np.bool_), state.sym_rows, state.row_start,
                              np.empty(len(book.wallets)), np.empty(len(book.wallets)), np.zeros(1, np.bool_))
        self.book, self.state, self.before_ranking = book, state, before_ranking

    def prepare(self) -> None:
        """The wallet figures the ranks are taken from (once per tick)."""
        if not self.arrays.ready[0]:
            self.before_ranking()
            self.arrays.equity[:] = self.state.out.accounts["equity"]
            self.arrays.cross_notional[:] = self.state.w_state[:, NOTIONAL]
            self.arrays.ready[0] = True

    def candidates(self, s: int, side: int) -> np.ndarray:
        """The queue of symbol s's positions of `side` (1 long, 0 short), best rank first
        (positions closed since it was ranked included: the caller skips them)."""
        pos, q = self.book.positions, self.arrays
        self.prepare()
        if not q.built[s]:
            _build_queue(s, q, pos.qty, pos.entry_unit, pos.isolated, pos.isolated_margin, pos.wallet,
                         self.face_mark, self.direction, self.book.symbol_unit)
        return q.queue[q.head[s, side]:q.hi[s, side]]


@njit(**JIT_EXACT)
def _build_queue(s, q, qty, entry_unit, isolated, isolated_margin, wallet, face_mark, direction, symbol_unit):
    """Rank symbol s's open positions for ADL, longs then shorts, into q.queue[row_start[s]:]:
    rank = pnl% × effective leverage in profit, pnl% ÷ effective leverage otherwise, where
    pnl% = upnl / (|q|·face·E) and effective leverage = notional / margin (an isolated
    position's margin balance; a cross position's notional share of its wallet's equity),
    ∞ where the margin is not positive. Highest first, ties and undefined ranks (NaN, last)
    in book order."""
    lo, hi = q.row_start[s], q.row_start[s + 1]
    key = np.empty(hi - lo)
    rows = np.empty(hi - lo, np.int64)
    undefined = np.empty(hi - lo, np.int64)
    at = lo
    for side in (1, 0):
        q.lo[s, side] = at
        q.head[s, side] = at
        m = 0
        n_nan = 0
        for j in range(lo, hi):
            i = q.sym_rows[j]
            if qty[i] == 0.0 or (qty[i] > 0.0) != (side == 1):
                continue
            notional, upnl = position_value(qty[i], entry_unit[i], face_mark[s], direction[s])
            pnl = upnl / (abs(qty[i]) * entry_unit[i])
            if isolated[i]:
                margin = isolated_margin[i] * symbol_unit[s] + upnl
            else:
                margin = q.equity[wallet[i]] * notional / q.cross_notional[wallet[i]]
            effective = notional / margin if margin > 0 else np.inf
            rank = pnl * effective if pnl > 0 else pnl / effective
            q.rank[i] = rank
            if rank != rank:
                undefined[n_nan] = i
                n_nan += 1
            else:
                key[m] = -rank
                rows[m] = i
                m += 1
        order = np.argsort(key[:m], kind="mergesort")  # stable: ties in book order
        for j in range(m):
            q.queue[at + j] = rows[order[j]]
        at += m
        for j in range(n_nan):
            q.queue[at + j] = undefined[j]
        at += n_nan
        q.hi[s, side] = at
    q.built[s] = True


def adl_figures(book: Book, mark: np.ndarray, state) -> tuple[np.ndarray, np.ndarray]:
    """Per position in book order, its ADL rank (model §8.5; NaN when flat) and its quantile
    0-4 in its symbol and side's queue as exchanges publish it (4: the first fifth, the first
    to be deleveraged; -1 when flat), from the engine's figures now."""
    queues = AdlQueues(book, mark, state)
    q = queues.arrays
    quantile = np.full(len(book.positions), -1, np.int8)
    rank = np.full(len(book.positions), np.nan)
    for s in range(len(book.instruments)):
        queues.candidates(s, 0)  # builds both sides
    _queue_quantiles(q.queue, q.lo, q.hi, q.rank, quantile, rank)
    return rank, quantile


@njit(**JIT_EXACT)
def _queue_quantiles(queue, lo, hi, queue_rank, quantile, rank):
    """Each queued position's quantile from its place in its queue, and its rank."""
    for s in range(lo.shape[0]):
        for side in range(2):
            n = hi[s, side] - lo[s, side]
            for place in range(n):
                i = queue[lo[s, side] + place]
                quantile[i] = 4 - (5 * place) // n
                rank[i] = queue_rank[i]


def run_round(book: Book, mark: np.ndarray, fund: np.ndarray, closes: Closes, queues: AdlQueues, state, log,
              ts) -> list:
    """Make a round's closes in order (model §8.3-8.5): the book's quantities and money, the
    fund and the log change as each close is made. Returns the MoneyOverflowErrors of the
    closes not made (the others are)."""
    pos, inst = book.positions, book.instruments
    face_places, mark_places = decimal_places(inst.face_value), decimal_places(mark)
    rate_places = decimal_places(inst.liquidation_fee_rate)
    symbols = _Symbols(inst.face_value, inst.inverse, inst.settle_asset, inst.liquidation_fee_rate,
                       book.asset_scale[inst.settle_asset].astype(np.int64), book.symbol_unit, mark, queues.face_mark,
                       queues.direction, face_places, mark_places, add_places(face_places, mark_places, rate_places),
                       add_places(face_places, rate_places))
    money = _Book(pos.qty, pos.entry_price, pos.entry_unit, pos.symbol, pos.wallet, pos.isolated, pos.isolated_margin,
                  book.wallets.balance, fund)
    failed, k = [], 0
    while True:
        start = len(log)
        status, k, end = _run_closes(k, closes, money, symbols, queues.arrays, _Log(*log.kernel_columns()), start)
        log.extend_to(end, ts)
        if status == DONE:
            return failed
        if status == GROW:
            log.reserve(max(len(log), 1024))
            continue
        if status == RANK:
            queues.prepare()
            continue
        rows = closes.rows[closes.start[k]:closes.start[k + 1]]
        try:
            apply_close(book, fund, log, ts, plan_close(book, mark, fund, rows, int(closes.wallet[k]),
                                                         bool(closes.isolated[k]), queues, state))
        except MoneyOverflowError as e:  # nothing of this close is made
            failed.append(e)
        k += 1


@njit(**_WITH_GIL)
def _amount(kind, qty, price, price_places, entry, face, inverse, rate, scale, face_places, fee_places,
            fee_numer_places):
    """(units, ok) of closing `qty` entered at `entry` at `price` (of `price_places` decimal
    places, money.float_places): the realized PnL floored (REALIZE) or the liquidation fee
    rounded up (FEE), by money.row_amount's certified fast paths, else by its Decimal path
    (money.decimal_amount, in object mode); not ok: beyond 64-bit money. Scalars only: a
    call passing arrays pays their reference counts."""
    if kind == REALIZE:
        units, ok = row_amount(False, qty, entry, face, inverse, price, 0.0, scale, float_places(qty), face_places, -1,
                               price_places)
    else:
        units, ok = row_amount(True, abs(qty), entry, face, inverse, price, rate, scale, float_places(qty), fee_places,
                               fee_numer_places, price_places)
    if not ok:
        with objmode(units="int64", ok="boolean"):
            units, ok = _decimal_units(kind, qty, entry, face, inverse, price, rate, scale)
    return (units if kind == REALIZE else -units), ok


@njit(inline="always", **_WITH_GIL)
def _amount_of(kind, qty, price, price_places, entry, s, sy):
    """_amount with symbol s's terms."""
    return _amount(kind, qty, price, price_places, entry, sy.face[s], sy.inverse[s], sy.liq_fee_rate[s], sy.scale[s],
                   sy.face_places[s], sy.fee_places[s], sy.fee_numer_places[s])


def _decimal_units(kind, qty, entry, face, inverse, price, rate, scale) -> tuple[int, bool]:
    units = (decimal_amount("realize", qty, face, price, entry, 0.0, bool(inverse), int(scale)) if kind == REALIZE
             else decimal_amount("funding", abs(qty), face, price, entry, rate, bool(inverse), int(scale)))
    return (0, False) if units is None else (units, True)


@njit(**_WITH_GIL)
def _run_closes(k, closes, b, sy, q, log, n_log):
    """Closes k, k+1, ... of a round, each planned whole, certified, then applied to the
    book's columns and appended to the log columns from n_log. Returns (DONE, _, n_log), or,
    nothing of close k made: (GENERAL, k, n_log): close k is the general planner's; (GROW, k,
    n_log): the log needs room; (RANK, k, n_log): the ADL queues need their figures (prepare)."""
    n_closes = len(closes.wallet)
    match_row = np.empty(16, np.int64)   # ADL matches of the close being planned
    match_qty = np.empty(16)
    match_gain = np.empty(16, np.int64)
    match_of = np.empty(16, np.int64)
    while k < n_closes:
        a, z = closes.start[k], closes.start[k + 1]
        w, isolated = closes.wallet[k], closes.isolated[k]
        m = 0
        for j in range(a, z):
            m += b.qty[closes.rows[j]] != 0.0
        if m == 0:  # an ADL earlier in this round closed them already
            k += 1
            continue
        rows = np.empty(m, np.int64)
        realized = np.empty(m, np.int64)
        fee = np.empty(m, np.int64)
        weight = np.empty(m, np.int64)
        total = 0.0  # Σ |amount| of the close: with the largest account touched, bounds every integer below
        t = 0
        for j in range(a, z):
            i = closes.rows[j]
            qty = b.qty[i]
            if qty == 0.0:
                continue
            s = b.symbol[i]
            notional, upnl = position_value(qty, b.entry_unit[i], sy.face_mark[s], sy.direction[s])
            if not (abs(upnl / sy.unit[s]) < 2.0**62 and abs(notional / sy.unit[s]) < 2.0**62):
                return GENERAL, k, n_log
            r, ok = _amount_of(REALIZE, qty, sy.mark[s], sy.mark_places[s], b.entry_price[i], s, sy)
            f, ok_fee = _amount_of(FEE, qty, sy.mark[s], sy.mark_places[s], b.entry_price[i], s, sy)
            if not (ok and ok_fee):
                return GENERAL, k, n_log
            rows[t], realized[t], fee[t] = i, r, f
            weight[t] = max(np.int64(np.rint(notional / sy.unit[s])), 1)
            total += abs(float(r)) + abs(float(f))
            t += 1
        first = rows[0]
        s0 = b.symbol[first]
        asset, unit = sy.settle_asset[s0], sy.unit[s0]
        start = b.isolated_margin[first] if isolated else b.balance[w]
        fund_before = b.fund[asset]
        largest = max(abs(float(b.balance[w])), abs(float(start)), abs(float(fund_before)))
        total += abs(float(start))
        if largest + total >= _CERTIFIED:
            return GENERAL, k, n_log
        left = start
        for t in range(m):
            left += realized[t]
        if left >= 0 or fund_before >= -left:
            fee_total = 0
            for t in range(m):
                fee_total += fee[t]
            fee_paid = min(fee_total, max(left, 0))
            fund_delta = fee_paid if left >= 0 else left  # a deficit is paid by the fund
            if abs(fund_delta) >= _SPREAD_FLOAT:
                return GENERAL, k, n_log
            share = spread_float(fund_delta, fee if left >= 0 else np.ones(m, np.int64))
            if n_log + m > len(log.kind):
                return GROW, k, n_log
            remaining = max(left, 0) - fee_paid
            b.balance[w] = b.balance[w] + remaining if isolated else remaining
            if isolated:
                b.isolated_margin[first] = 0
            b.fund[asset] = fund_before + fund_delta
            for t in range(m):
                i = rows[t]
                _event(log, n_log, LIQUIDATION_CLOSE, w, i, -b.qty[i], sy.mark[b.symbol[i]], realized[t], share[t])
                n_log += 1
                b.qty[i] = 0.0
            k += 1
            continue
        # bankrupt and the fund cannot pay: auto-deleverage at bankruptcy prices
        deficit = -left
        if deficit >= _SPREAD_FLOAT:
            return GENERAL, k, n_log
        share = spread_float(deficit, weight)
        price = np.empty(m)
        cover = np.zeros(m, np.int64)
        unmatched = np.zeros(m)
        n_match = 0
        for t in range(m):
            i = rows[t]
            s = b.symbol[i]
            price[t] = bankruptcy_price(b.qty[i], b.entry_price[i], sy.face[s], sy.inverse[s],
                                        float(realized[t] + share[t]) * unit)
            if not np.isfinite(price[t]):
                return GENERAL, k, n_log
            price_places = float_places(price[t])
            side = 0 if b.qty[i] > 0 else 1
            if not q.ready[0]:
                return RANK, k, n_log
            if not q.built[s]:
                _build_queue(s, q, b.qty, b.entry_unit, b.isolated, b.isolated_margin, b.wallet, sy.face_mark,
                             sy.direction, sy.unit)
            h, end = q.head[s, side], q.hi[s, side]
            while h < end and b.qty[q.queue[h]] == 0.0:  # closed since ranked: gone for the round
                h += 1
            q.head[s, side] = h
            need = abs(b.qty[i])
            while need > 0 and h < end:
                c = q.queue[h]
                h += 1
                if b.qty[c] == 0.0 or b.wallet[c] == w:
                    continue
                take = min(need, abs(b.qty[c]))
                closed = np.copysign(take, b.qty[c])
                need -= take
                if sy.inverse[s]:
                    estimate = closed * sy.face[s] * (1.0 / b.entry_price[c] - 1.0 / price[t])
                else:
                    estimate = closed * sy.face[s] * (price[t] - b.entry_price[c])
                if not abs(estimate / unit) < 0.999 * 2.0**62:
                    return GENERAL, k, n_log
                gain, ok = _amount_of(REALIZE, closed, price[t], price_places, b.entry_price[c], s, sy)
                if not ok:
                    return GENERAL, k, n_log
                if n_match == len(match_row):
                    match_row, match_qty = _grown(match_row), _grown(match_qty)
                    match_gain, match_of = _grown(match_gain), _grown(match_of)
                match_row[n_match], match_qty[n_match], match_gain[n_match], match_of[n_match] = c, closed, gain, t
                n_match += 1
                total += abs(float(gain))
                credited = b.isolated_margin[c] if b.isolated[c] else b.balance[b.wallet[c]]
                largest = max(largest, abs(float(credited)))
            if need > 0:  # not enough opposite positions: the fund covers the rest, even below 0
                unmatched[t] = need
                cover[t] = ceil_share(share[t], need, abs(b.qty[i]))
                total += abs(float(cover[t]))
        if largest + total >= _CERTIFIED:
            return GENERAL, k, n_log
        if n_log + m + n_match + m > len(log.kind):
            return GROW, k, n_log
        if not isolated:
            b.balance[w] = 0
        else:
            b.isolated_margin[first] = 0
        j = 0
        for t in range(m):
            i = rows[t]
            _event(log, n_log, LIQUIDATION_CLOSE, w, i, -b.qty[i], price[t], realized[t] + share[t], 0)
            n_log += 1
            while j < n_match and match_of[j] == t:
                c = match_row[j]
                if b.isolated[c]:
                    b.isolated_margin[c] += match_gain[j]
                else:
                    b.balance[b.wallet[c]] += match_gain[j]
                _event(log, n_log, ADL_CLOSE, b.wallet[c], c, -match_qty[j], price[t], match_gain[j], 0)
                n_log += 1
                b.qty[c] -= match_qty[j]
                j += 1
            if unmatched[t] > 0:
                b.fund[asset] -= cover[t]
                _event(log, n_log, FUND_SHORTFALL, w, i, unmatched[t], price[t], -cover[t], -cover[t])
                n_log += 1
            b.qty[i] = 0.0
        k += 1
    return DONE, k, n_log


@njit(inline="always", **JIT_EXACT)
def _event(log, n, kind, wallet, row, qty, price, realized, fund):
    log.kind[n], log.wallet[n], log.row[n], log.qty[n] = kind, wallet, row, qty
    log.price[n], log.realized[n], log.fund[n] = price, realized, fund
    log.equity[n], log.mm[n], log.risk_ratio[n] = np.nan, np.nan, np.nan  # a close's are not given


@njit(**JIT_EXACT)
def _grown(a):
    out = np.empty(2 * len(a), a.dtype)
    out[:len(a)] = a
    return out


def orders_to_cancel(book: Book, wallets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Indices of the resting orders cancelled by forced closes of book rows `rows` (of
    `wallets`): an isolated close cancels its wallet's orders in its symbol, a cross close
    all of its wallet's (orders are sorted by wallet)."""
    pos, ords = book.positions, book.orders
    n_sym, n_w = len(book.instruments), len(book.wallets)
    iso = pos.isolated[rows]
    cross_closed, iso_closed = np.zeros(n_w, bool), np.zeros(n_w, bool)
    cross_closed[wallets[~iso]] = True
    iso_closed[wallets[iso]] = True
    gone = cross_closed[ords.wallet]
    maybe = np.flatnonzero(iso_closed[ords.wallet] & ~gone)  # in a wallet with an isolated close: its symbol's?
    gone[maybe] = np.isin(ords.wallet[maybe].astype(np.int64) * n_sym + ords.symbol[maybe],
                          wallets[iso].astype(np.int64) * n_sym + pos.symbol[rows[iso]])
    return np.flatnonzero(gone)


@njit(**JIT_EXACT)
def bankruptcy_price(qty, entry, face, inverse, realized):
    """The price at which closing `qty` (entered at `entry`) realizes `realized` (model
    §8.4: linear in P, inverse in 1/P; ∞ when 1/P would not be positive)."""
    qf = qty * face
    if inverse:
        inv = 1.0 / entry - realized / qf
        return 1.0 / inv if inv > 0 else np.inf
    return entry + realized / qf


# -- the general planner: one close in Python integers ------------------------------------

@dataclass
class CloseMoves:
    """What one forced close does, in exact units (`apply_close` makes it).

    balance: (wallet ids, int64 units) and isolated_margin: (book rows, int64 units) are
    moves for Book.apply_moves (a target may be named more than once: its moves add up
    exactly); fund: asset → exact change of the insurance fund; qty: (book rows, quantity
    change) in application order; events: (kind, wallet, row, qty, price, realized units,
    fund units) in emission order."""
    balance: tuple = field(default_factory=lambda: (np.zeros(0, np.int64), np.zeros(0, np.int64)))
    isolated_margin: tuple = field(default_factory=lambda: (np.zeros(0, np.int64), np.zeros(0, np.int64)))
    fund: dict = field(default_factory=dict)
    qty: tuple = field(default_factory=lambda: (np.zeros(0, np.int64), np.zeros(0)))
    events: list = field(default_factory=list)

    def money_moved(self) -> int:
        """Σ of every balance, isolated margin and fund change, exactly (model §8.6: equals
        the realized PnL of the close events)."""
        return (sum(int(u) for u in self.balance[1]) + sum(int(u) for u in self.isolated_margin[1])
                + sum(self.fund.values()))

    def realized(self) -> int:
        return sum(int(e[5]) for e in self.events)


def position_values(book: Book, mark: np.ndarray, rows) -> tuple[np.ndarray, np.ndarray]:
    """(upnl, notional) of rows at `mark` and their current quantities."""
    pos = book.positions
    return kernel_values(np.asarray(rows, dtype=np.int64), pos.qty, pos.entry_unit, pos.symbol, *book.face_mark(mark))


def close_amounts(book: Book, mark: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact (realized PnL floored, liquidation fee rounded up) of closing rows at `mark`, in
    units, as settlement computes them."""
    pos, inst = book.positions, book.instruments
    s = pos.symbol[rows]
    scale = book.asset_scale[inst.settle_asset[s]]
    args = (pos.entry_price[rows], inst.face_value[s], inst.inverse[s], mark[s])
    return (realized_units(pos.qty[rows], *args, scale),
            fee_units(pos.qty[rows], *args, inst.liquidation_fee_rate[s], scale))


def plan_adl(book: Book, queues: AdlQueues, i: int, w: int) -> tuple[list, float]:
    """Closing position i's quantity (of wallet w) against the opposite side of its symbol
    in other wallets, in ADL queue order. Returns ([(row, quantity closed)], the quantity
    left unmatched)."""
    pos = book.positions
    need = abs(pos.qty[i])
    matches = []
    for c in queues.candidates(pos.symbol[i], 0 if pos.qty[i] > 0 else 1).tolist():
        if need <= 0:
            break
        if pos.qty[c] == 0 or pos.wallet[c] == w:
            continue
        take = min(need, abs(pos.qty[c]))
        matches.append((c, np.copysign(take, pos.qty[c])))
        need -= take
    return matches, need


def plan_close(book: Book, mark: np.ndarray, fund: np.ndarray, rows: np.ndarray, w: int, isolated: bool,
               queues: AdlQueues, state) -> CloseMoves:
    """The moves of closing `rows` (one isolated position, or a wallet's cross positions) at
    the mark (model §8.3), changing nothing.

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
    realized, fee = close_amounts(book, mark, rows)
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
            s = pos.symbol[i]
            bankruptcy = bankruptcy_price(pos.qty[i], pos.entry_price[i], inst.face_value[s], inst.inverse[s],
                                          (r + u) * unit)
            events.append((LIQUIDATION_CLOSE, w, i, -pos.qty[i], bankruptcy, r + u, 0))
            matches, unmatched = plan_adl(book, queues, i, w)
            for (c, closed), gain in zip(matches, _adl_gains(book, matches, bankruptcy)):
                key = ("margin", c) if pos.isolated[c] else ("balance", int(pos.wallet[c]))
                credits[key] = credits.get(key, 0) + gain
                adl.append((c, closed))
                events.append((ADL_CLOSE, pos.wallet[c], c, -closed, bankruptcy, gain, 0))
            if unmatched > 0:  # not enough opposite positions: the fund covers the rest, even below 0
                cover = int(ceil_share(u, unmatched, abs(pos.qty[i])))
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
    return CloseMoves(balance=_moves(balance), isolated_margin=_moves(margin), fund={asset: fund_after - fund_before},
                      qty=(qty_rows, qty_change), events=events)


def apply_close(book: Book, fund: np.ndarray, log, ts, moves: CloseMoves) -> None:
    """Make a planned close: money through Book.apply_moves (exact, all or nothing; the plan
    has checked it already), the fund, the quantities (a closed position's change is −qty,
    leaving exactly 0), the events."""
    book.apply_moves(balance=moves.balance, isolated_margin=moves.isolated_margin)
    for asset, delta in moves.fund.items():
        total = int(fund[asset]) + delta
        assert INT64_MIN <= total <= INT64_MAX  # checked by plan_close
        fund[asset] = total
    np.add.at(book.positions.qty, *moves.qty)
    for kind, wallet, i, qty, price, realized, fund_units in moves.events:
        log.append(ts, kind, wallet, i, qty=qty, price=price, realized=realized, fund=fund_units)


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
