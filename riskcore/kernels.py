"""numba kernels: per-position figures (docs/model.md §4), isolated/cross checks (§5), liquidation
prices (§6). Arrays in, arrays out; no validation here (the Python layer did it).

Every formula of the model is written once, as a small njit function below, and called by the
scan, the tick engine, margin operations and settlement alike: `row_figures` / `mm_rate`
(§4), `margin_balance`, `liquidates` / `isolated_liquidates` / `cross_liquidates` (the one
trigger, §5), `risk_ratio`, `available_balance`, `transferable`, `account_figures` (§5.2).

Kernels take a few structured arguments, NamedTuples of arrays built once per book or tick
(numba passes them as plain structs): `SymbolTable` (instruments and their tiers),
`PositionColumns`, `WalletColumns`, `Marks`, and the output buffers `PositionFigures`,
`AccountFigures`. Kernels unpack the fields they use into locals before `prange` and pass
arrays, never structs, to the functions they call in the loop (a struct passed into the
wallet pass's loop cost ~30% of the liquidation-price scan).

Hot path, one pass (`scan_pass`): threads own whole wallets, and since a wallet's positions
are one contiguous range (see book.py) each row's figures are computed, written and summed
into its wallet in one go; per-account sums are segmented reductions, race-free under
`prange`. It takes a subset of wallets and writes in place, so the tick engine can re-derive
exactly the wallets a forced close touched. Functions called per row with array arguments
are inlined by numba (`inline="always"`): a call passing arrays costs their reference
counts, ~30% of the liquidation-price scan.
"""

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .config import JIT, JIT_PARALLEL

# -- state layouts ----------------------------------------------------------------------------

# The tick engine's per-wallet state, one row per wallet so a wallet costs two cache lines,
# not one per column: running sums of its cross positions' upnl, mm, im, fee, notional, of
# its isolated positions' upnl and margin, whether it has an open cross position, its
# balance and order margin.
WALLET_STATE_COLUMNS = ("upnl", "mm", "im", "fee", "notional", "iso_upnl", "iso_margin", "open_cross", "balance",
                        "order_margin")
UPNL, MM, IM, FEE, NOTIONAL, ISO_UPNL, ISO_MARGIN, OPEN_CROSS, BALANCE, ORDER_MARGIN = range(len(WALLET_STATE_COLUMNS))
WALLET_STATE = len(WALLET_STATE_COLUMNS)


class SymbolTable(NamedTuple):
    """Per symbol (dense id) and its tiers, tiers of symbol s at tier_start[s]:tier_start[s+1]."""
    inverse: np.ndarray            # bool
    face: np.ndarray
    taker: np.ndarray
    mm_fraction: np.ndarray        # NaN: tiered maintenance margin
    unit: np.ndarray               # value of one money unit of the settle asset
    tier_start: np.ndarray         # int64, len n_symbols + 1
    tier_floor: np.ndarray
    tier_mmr: np.ndarray
    tier_cum: np.ndarray
    tier_max_leverage: np.ndarray
    tier_breaks: np.ndarray        # n_symbols × (most tiers − 1): floors after the first, +inf padded

    @classmethod
    def of(cls, book) -> "SymbolTable":
        inst = book.instruments
        return cls(inst.inverse, inst.face_value, inst.taker_fee_rate, inst.mm_im_fraction, book.symbol_unit,
                   inst.tier_start, inst.tier_floor, inst.tier_mmr, inst.tier_cum, inst.tier_max_leverage,
                   inst.tier_breaks)


class PositionColumns(NamedTuple):
    """Position rows, aligned: the book's (sorted by wallet, symbol, side) or the tick
    engine's symbol-major copy (which carries no entry_price/leverage: empty there)."""
    wallet: np.ndarray
    symbol: np.ndarray
    qty: np.ndarray
    entry_price: np.ndarray
    leverage: np.ndarray
    entry_unit: np.ndarray         # face·E (linear) or face/E (inverse)
    inv_leverage: np.ndarray
    isolated: np.ndarray           # bool
    isolated_margin: np.ndarray    # int64 money units

    @classmethod
    def of(cls, positions) -> "PositionColumns":
        p = positions
        return cls(p.wallet, p.symbol, p.qty, p.entry_price, p.leverage, p.entry_unit, p.inv_leverage, p.isolated,
                   p.isolated_margin)


class WalletColumns(NamedTuple):
    """Per wallet: its positions are rows pos_start[w]:pos_start[w+1]."""
    pos_start: np.ndarray          # int64, len n_wallets + 1
    balance: np.ndarray            # int64 money units
    unit: np.ndarray               # value of one money unit
    order_margin: np.ndarray

    @classmethod
    def of(cls, book) -> "WalletColumns":
        w = book.wallets
        return cls(w.pos_start, w.balance, book.wallet_unit, w.order_margin)


class Marks(NamedTuple):
    """Per symbol at one set of marks: the mark, face·P (face/P inverse) and ±1 (Book.face_mark)."""
    mark: np.ndarray
    face_mark: np.ndarray
    direction: np.ndarray


class PositionFigures(NamedTuple):
    """Per-position output buffers (model §4–6); `liquidate` is the position's flag (§5)."""
    notional: np.ndarray
    upnl: np.ndarray
    im: np.ndarray
    mm: np.ndarray
    fee: np.ndarray
    roe: np.ndarray
    margin_balance: np.ndarray
    risk_ratio: np.ndarray
    liq_price: np.ndarray
    liquidate: np.ndarray


class AccountFigures(NamedTuple):
    """Per-wallet output buffers (model §5.2); the tick engine's are column views of one
    row-per-wallet array, in this order (see ACCOUNT_FIGURES)."""
    equity: np.ndarray
    cross_mm: np.ndarray
    cross_im: np.ndarray
    cross_fee: np.ndarray
    risk_ratio: np.ndarray
    available_balance: np.ndarray
    transferable: np.ndarray
    total_equity: np.ndarray
    liquidate: np.ndarray


class RunningFigures(NamedTuple):
    """What the tick engine keeps per position row (symbol-major) to add each tick's change."""
    upnl: np.ndarray
    mm: np.ndarray
    im: np.ndarray
    fee: np.ndarray
    notional: np.ndarray
    liquidate: np.ndarray          # isolated rows only (cross rows: False)


POSITION_FIGURES = PositionFigures._fields[:-1]  # the float figures; `liquidate` is bool
ACCOUNT_FIGURES = AccountFigures._fields[:-1]    # the float figures: the columns of a packed array
EQUITY, CROSS_MM, CROSS_IM, CROSS_FEE, RISK_RATIO, AVAILABLE_BALANCE, TRANSFERABLE, TOTAL_EQUITY = \
    range(len(ACCOUNT_FIGURES))


def account_views(packed: np.ndarray, liquidate: np.ndarray) -> AccountFigures:
    """AccountFigures whose float columns are views of a (n_wallets × ACCOUNT_FIGURES) array."""
    return AccountFigures(*(packed[:, k] for k in range(len(ACCOUNT_FIGURES))), liquidate)


# -- the model's formulas, each written once ----------------------------------------------------

@njit(inline="always", **JIT)
def tier_of(notional, s, tier_start, tier_breaks):
    """Index (into the tier arrays) of symbol s's last tier whose floor is <= notional.

    Counting the breaks below instead of searching: no data-dependent branch, and the same
    trip count for every symbol (Instruments.tier_breaks), ~4x faster on random rows.
    """
    k = tier_start[s]
    for j in range(tier_breaks.shape[1]):
        k += tier_breaks[s, j] <= notional
    return k


@njit(**JIT)
def is_fraction_model(mm_fraction):
    """Whether the instrument's mm is a fraction of its im (model §4.3): mm_fraction not NaN."""
    return mm_fraction == mm_fraction


@njit(inline="always", **JIT)
def mm_rate(k, inv_leverage, mm_fraction, tier_mmr, tier_cum):
    """(rate, cum) with mm = notional·rate − cum: tier k's, or fraction·IM (model §4.3).

    The one definition of maintenance margin. The tier is looked up by the caller
    unconditionally and the fraction model selected here afterwards: an early return around
    the tier search stops LLVM from if-converting and costs ~5x in the scan.
    """
    rate = tier_mmr[k]
    cum = tier_cum[k]
    if is_fraction_model(mm_fraction):
        rate = mm_fraction * inv_leverage
        cum = 0.0
    return rate, cum


@njit(inline="always", **JIT)
def maintenance_margin(notional, k, inv_leverage, mm_fraction, tier_mmr, tier_cum):
    """mm of a position of `notional` in tier k (model §4.2) or by the fraction model (§4.3)."""
    rate, cum = mm_rate(k, inv_leverage, mm_fraction, tier_mmr, tier_cum)
    return notional * rate - cum


@njit(**JIT)
def position_value(qty, entry_unit, face_mark, direction):
    """(notional, upnl) of a position (model §4.1), division-free: notional = |q|·face·P
    (|q|·face/P inverse), upnl = ±q·(face·P − face·E) with the symbol's face_mark and ±1
    (Book.face_mark) and the position's entry_unit (face·E, face/E inverse)."""
    return abs(qty) * face_mark, direction * qty * (face_mark - entry_unit)


@njit(**JIT)
def position_values(rows, qty, entry_unit, symbol, face_mark, direction):
    """(upnl, notional) arrays of book rows at one set of marks, by position_value."""
    upnl, notional = np.empty(len(rows)), np.empty(len(rows))
    for j in range(len(rows)):
        i = rows[j]
        notional[j], upnl[j] = position_value(qty[i], entry_unit[i], face_mark[symbol[i]], direction[symbol[i]])
    return upnl, notional


@njit(inline="always", **JIT)
def row_figures(qty, entry_unit, inv_leverage, face_mark, direction, taker, mm_fraction,
                s, tier_start, tier_breaks, tier_mmr, tier_cum):
    """(notional, upnl, im, mm, fee) of one position (model §4), division-free: the symbol's
    face·P (face/P inverse) and ±1 come per tick, face·E (face/E) and 1/leverage per position.
    All zero when flat, even where the symbol has no mark (NaN)."""
    notional, upnl = position_value(qty, entry_unit, face_mark, direction)
    im = notional * inv_leverage
    k = tier_of(notional, s, tier_start, tier_breaks)
    mm = maintenance_margin(notional, k, inv_leverage, mm_fraction, tier_mmr, tier_cum)
    fee = notional * taker
    if qty == 0.0:
        notional = 0.0
        upnl = 0.0
        im = 0.0
        mm = 0.0
        fee = 0.0
    return notional, upnl, im, mm, fee


@njit(**JIT)
def margin_balance(isolated_units, unit, upnl):
    """An isolated position's margin balance (model §5.1): isolated_margin + upnl."""
    return isolated_units * unit + upnl


@njit(**JIT)
def liquidates(cushion, fee, mm):
    """The liquidation trigger (model §5): liquidate when cushion − fee ≤ mm. The only place
    that says so; the isolated and cross conditions below add when it applies."""
    return cushion - fee <= mm


@njit(**JIT)
def isolated_liquidates(qty, margin_balance, fee, mm):
    """Model §5.1: a non-flat isolated position with margin_balance − fee ≤ mm."""
    return qty != 0.0 and liquidates(margin_balance, fee, mm)


@njit(**JIT)
def cross_liquidates(has_cross, equity, cross_fee, cross_mm):
    """Model §5.2: a wallet with a non-flat cross position and equity − cross_fee ≤ cross_mm."""
    return has_cross and liquidates(equity, cross_fee, cross_mm)


@njit(**JIT)
def risk_ratio(is_open, cushion, mm, fee):
    """(mm + fee) / cushion (model §5): 0 when nothing is open, ∞ when cushion ≤ 0. Isolated:
    is_open = q ≠ 0, cushion = margin_balance; cross: a non-flat cross position, equity."""
    if not is_open:
        return 0.0
    if cushion <= 0.0:
        return np.inf
    return (mm + fee) / cushion


@njit(**JIT)
def risk_ratios(cushion, mm, fee):
    """risk_ratio of open positions, per row."""
    out = np.empty(len(cushion))
    for j in range(len(cushion)):
        out[j] = risk_ratio(True, cushion[j], mm[j], fee[j])
    return out


@njit(**JIT)
def free_margin(equity, cross_im, order_margin):
    """equity − cross_im − order_margin: available_balance before its floor at 0."""
    return equity - cross_im - order_margin


@njit(**JIT)
def available_balance(equity, cross_im, order_margin):
    """Model §5.2: max(0, equity − cross_im − order_margin)."""
    return max(0.0, free_margin(equity, cross_im, order_margin))


@njit(**JIT)
def transferable(balance, equity, cross_mm, order_margin):
    """Model §5.2: max(0, min(balance, equity − cross_mm − order_margin))."""
    return max(0.0, min(balance, equity - cross_mm - order_margin))


@njit(**JIT)
def account_figures(balance, upnl_sum, mm_sum, im_sum, fee_sum, iso_equity, has_cross, order_margin):
    """(equity, risk_ratio, available_balance, transferable, total_equity, liquidate) of a
    wallet from its sums (model §5)."""
    equity = balance + upnl_sum
    return (equity, risk_ratio(has_cross, equity, mm_sum, fee_sum),
            available_balance(equity, im_sum, order_margin), transferable(balance, equity, mm_sum, order_margin),
            equity + iso_equity, cross_liquidates(has_cross, equity, fee_sum, mm_sum))


@njit(**JIT)
def _leg_coefficients(k, qty, entry_unit, inv_leverage, direction, face, taker, mm_fraction, tier_mmr, tier_cum):
    """Slope and intercept of upnl − mm − fee in t (t = P linear, 1/P inverse) at tier k:
    upnl = direction·q·face·t − direction·q·entry_unit (entry_unit = face·E, face/E inverse)."""
    a = abs(qty) * face
    rate, cum = mm_rate(k, inv_leverage, mm_fraction, tier_mmr, tier_cum)
    return direction * qty * face - a * (rate + taker), cum - direction * qty * entry_unit


@njit(**JIT)
def _liq_price_single(cushion, qty, entry_unit, inv_leverage, inverse, direction, face, taker, mm_fraction,
                      s, tier_start, tier_breaks, tier_floor, tier_mmr, tier_cum, mark):
    """One leg: start at the current tier and step toward the root (usually 1–2 steps).

    Within a tier the condition is linear with a slope of fixed sign (mmr + fee < 1), so
    the root lies on one side; stepping back the way we came means the condition jumps
    across zero at the floor between (given maintenance amounts), which is the answer.
    One division per step: the root is placed among the tiers by its notional root·|q|·face.
    Returns -1.0 when that reasoning does not apply (flat slope) so the caller walks all.
    """
    a = abs(qty) * face
    t_now = 1.0 / mark if inverse else mark
    t0, t1 = tier_start[s], tier_start[s + 1]
    k = tier_of(a * t_now, s, tier_start, tier_breaks)
    step = 0
    for _ in range(t1 - t0 + 1):
        slope, icpt = _leg_coefficients(k, qty, entry_unit, inv_leverage, direction, face, taker, mm_fraction,
                                        tier_mmr, tier_cum)
        if slope == 0.0:
            return -1.0
        root = -(icpt + cushion) / slope
        notional = root * a
        want = -1 if notional < tier_floor[k] else (1 if k + 1 < t1 and notional > tier_floor[k + 1] else 0)
        if want == 0:
            return root
        if step != 0 and want != step:
            return tier_floor[k] / a if step == 1 else tier_floor[k + 1] / a
        if want == -1 and k == t0:
            return np.nan  # the root is at a negative price
        step = want
        k += want
    return np.nan


@njit(inline="always", **JIT)
def liq_price(cushion, i0, i1, qty, entry_unit, inv_leverage, inverse, direction, face, taker, mm_fraction,
              s, tier_start, tier_breaks, tier_floor, tier_mmr, tier_cum, mark):
    """Mark price of one symbol at which cushion + Σ_legs(upnl − mm − fee) = 0 (model §6).

    Legs are rows i0..i1-1 (one position, or both legs of a hedge-mode symbol) moving
    with the price. In t (= P, or 1/P for inverse contracts) the function is linear between
    tier breakpoints, so walk the intervals in order, solve each in closed form and keep the
    root inside its interval; at a jump of given maintenance amounts the breakpoint itself is
    the boundary. Several roots (possible only with hedged legs) → the one nearest the mark.
    NaN when no positive finite price qualifies.
    """
    if i1 - i0 == 1 and qty[i0] != 0.0:
        t = _liq_price_single(cushion, qty[i0], entry_unit[i0], inv_leverage[i0], inverse, direction, face, taker,
                              mm_fraction, s, tier_start, tier_breaks, tier_floor, tier_mmr, tier_cum, mark)
        if t != -1.0:
            if not (t > 0.0 and t < np.inf):
                return np.nan
            price = 1.0 / t if inverse else t
            return price if price < np.inf else np.nan
    n_legs = i1 - i0
    tiered = not is_fraction_model(mm_fraction)
    t0, t1 = tier_start[s], tier_start[s + 1]
    k0 = t0
    k1 = t0
    t_now = 1.0 / mark if inverse else mark
    best = np.nan
    best_dist = np.inf
    lo = 0.0
    prev_end = np.nan  # g at the end of the previous interval
    while True:
        slope = 0.0
        icpt = cushion
        for leg in range(n_legs):
            i = i0 + leg
            if qty[i] == 0.0:
                continue
            b, c = _leg_coefficients(k0 if leg == 0 else k1, qty[i], entry_unit[i], inv_leverage[i], direction,
                                     face, taker, mm_fraction, tier_mmr, tier_cum)
            slope += b
            icpt += c
        start_val = icpt + slope * lo
        if lo > 0.0 and prev_end == prev_end and (prev_end > 0.0) != (start_val > 0.0):
            if abs(lo - t_now) < best_dist:  # the function jumps across 0 at this breakpoint
                best, best_dist = lo, abs(lo - t_now)
        # the next breakpoint: the nearest next tier floor of any leg
        hi = np.inf
        nxt = -1
        if tiered:
            for leg in range(n_legs):
                i = i0 + leg
                k = k0 if leg == 0 else k1
                a = abs(qty[i]) * face
                if a > 0.0 and k + 1 < t1:
                    bp = tier_floor[k + 1] / a
                    if bp < hi:
                        hi, nxt = bp, leg
        if slope != 0.0:
            root = -icpt / slope
            if root > 0.0 and lo <= root <= hi and abs(root - t_now) < best_dist:
                best, best_dist = root, abs(root - t_now)
        if nxt < 0:
            break
        prev_end = icpt + slope * hi
        if nxt == 0:
            k0 += 1
        else:
            k1 += 1
        lo = hi
    if not (best > 0.0 and best < np.inf):
        return np.nan
    price = 1.0 / best if inverse else best
    return price if price < np.inf else np.nan


# -- the scan: one pass over wallets ------------------------------------------------------------

@njit(**JIT_PARALLEL)
def scan_pass(wallets, all_wallets, wal, pos, inst, marks, fig, acct, with_positions, with_liq_price, with_sums,
              w_state):
    """Every figure of the model (§4–6) for the positions of `wallets` (or of every wallet when
    all_wallets) and for those wallets, in one pass: each thread owns whole wallets and a
    wallet's positions are one contiguous range (book.py), so a row's figures are computed,
    written and summed into its wallet's figures while they are in registers, and the
    wallet's later walks (cross flags, liquidation prices) find its rows in cache.

    wal: WalletColumns, pos: PositionColumns, inst: SymbolTable, marks: Marks, fig:
    PositionFigures, acct: AccountFigures. Per row, liquidate is always written, upnl, im,
    mm and fee when with_positions or with_sums, the rest when with_positions (liq_price when
    with_liq_price too). with_sums keeps each wallet's running state in w_state (n_wallets ×
    WALLET_STATE: the tick engine's starting point for deltas)."""
    pos_start, balance_units, wallet_unit, order_margin = wal.pos_start, wal.balance, wal.unit, wal.order_margin
    symbol, qty, entry_unit, inv_leverage = pos.symbol, pos.qty, pos.entry_unit, pos.inv_leverage
    isolated, isolated_units = pos.isolated, pos.isolated_margin
    inverse, face, taker, mm_fraction, symbol_unit = inst.inverse, inst.face, inst.taker, inst.mm_fraction, inst.unit
    tier_start, tier_floor, tier_mmr, tier_cum = inst.tier_start, inst.tier_floor, inst.tier_mmr, inst.tier_cum
    tier_breaks = inst.tier_breaks
    mark, face_mark, direction = marks.mark, marks.face_mark, marks.direction
    p_notional, p_upnl, p_im, p_mm, p_fee = fig.notional, fig.upnl, fig.im, fig.mm, fig.fee
    p_roe, p_margin_balance, p_risk_ratio = fig.roe, fig.margin_balance, fig.risk_ratio
    p_liq_price, p_liquidate = fig.liq_price, fig.liquidate
    a_equity, a_cross_mm, a_cross_im, a_cross_fee = acct.equity, acct.cross_mm, acct.cross_im, acct.cross_fee
    a_risk_ratio, a_available, a_transferable = acct.risk_ratio, acct.available_balance, acct.transferable
    a_total_equity, a_liquidate = acct.total_equity, acct.liquidate
    with_row_sums = with_positions or with_sums
    n = len(pos_start) - 1 if all_wallets else len(wallets)
    for j in prange(n):
        w = np.int64(j) if all_wallets else wallets[j]
        start, end = pos_start[w], pos_start[w + 1]
        upnl_sum = 0.0
        mm_sum = 0.0
        im_sum = 0.0
        fee_sum = 0.0
        notional_sum = 0.0
        iso_upnl = 0.0
        iso_margin = 0.0
        has_cross = False
        for i in range(start, end):
            s = symbol[i]
            q = qty[i]
            notional, upnl, im, mm, fee = row_figures(q, entry_unit[i], inv_leverage[i], face_mark[s], direction[s],
                                                      taker[s], mm_fraction[s], s, tier_start, tier_breaks, tier_mmr,
                                                      tier_cum)
            if isolated[i]:
                margin = isolated_units[i] * symbol_unit[s]
                balance = margin_balance(isolated_units[i], symbol_unit[s], upnl)
                iso_upnl += upnl
                iso_margin += margin
                p_liquidate[i] = isolated_liquidates(q, balance, fee, mm)
                if with_positions:
                    p_margin_balance[i] = balance
                    p_risk_ratio[i] = risk_ratio(q != 0.0, balance, mm, fee)
            else:
                upnl_sum += upnl
                mm_sum += mm
                im_sum += im
                fee_sum += fee
                notional_sum += notional
                has_cross = has_cross or q != 0.0
                if with_positions:
                    p_margin_balance[i] = np.nan
                    p_risk_ratio[i] = np.nan
            if with_row_sums:
                p_upnl[i] = upnl
                p_im[i] = im
                p_mm[i] = mm
                p_fee[i] = fee
            if with_positions:
                p_notional[i] = notional
                p_roe[i] = 0.0 if q == 0.0 else upnl / (abs(q) * entry_unit[i] * inv_leverage[i])
        balance = balance_units[w] * wallet_unit[w]
        equity, ratio, available, transfer, total_equity, liquidate = account_figures(
            balance, upnl_sum, mm_sum, im_sum, fee_sum, iso_margin + iso_upnl, has_cross, order_margin[w])
        a_equity[w] = equity
        a_cross_mm[w] = mm_sum
        a_cross_im[w] = im_sum
        a_cross_fee[w] = fee_sum
        a_risk_ratio[w] = ratio
        a_available[w] = available
        a_transferable[w] = transfer
        a_total_equity[w] = total_equity
        a_liquidate[w] = liquidate
        if with_sums:
            w_state[w, UPNL] = upnl_sum
            w_state[w, MM] = mm_sum
            w_state[w, IM] = im_sum
            w_state[w, FEE] = fee_sum
            w_state[w, NOTIONAL] = notional_sum
            w_state[w, ISO_UPNL] = iso_upnl
            w_state[w, ISO_MARGIN] = iso_margin
            w_state[w, OPEN_CROSS] = 1.0 if has_cross else 0.0
            w_state[w, BALANCE] = balance
            w_state[w, ORDER_MARGIN] = order_margin[w]
        for i in range(start, end):
            if not isolated[i]:
                p_liquidate[i] = liquidate and qty[i] != 0.0
        if with_positions and with_liq_price:  # model §6, from the rows' figures just written
            # A cross group's cushion is balance + Σ_other symbols(upnl − mm − fee), summed as
            # prefix + suffix of the other groups: subtracting the group from the wallet total
            # would cancel catastrophically when the group dominates the wallet. (Inline: a
            # call passing these arrays per wallet costs ~15% of the scan.)
            # Reverse walk: the suffix of each group, parked in its first row's p_liq_price.
            suffix = 0.0
            g1 = end
            while g1 > start:
                g0 = g1 - 1
                while g0 > start and symbol[g0 - 1] == symbol[g1 - 1]:
                    g0 -= 1
                p_liq_price[g0] = suffix
                if not isolated[g0]:
                    for i in range(g0, g1):
                        suffix += p_upnl[i] - p_mm[i] - p_fee[i]
                g1 = g0
            prefix = 0.0
            g0 = start
            while g0 < end:  # groups: the rows of one symbol (hedge legs are adjacent)
                s = symbol[g0]
                g1 = g0 + 1
                while g1 < end and symbol[g1] == s:
                    g1 += 1
                if isolated[g0]:
                    for i in range(g0, g1):
                        price = np.nan
                        if qty[i] != 0.0:
                            price = liq_price(isolated_units[i] * symbol_unit[s], i, i + 1, qty, entry_unit, inv_leverage,
                                              inverse[s], direction[s], face[s], taker[s], mm_fraction[s],
                                              s, tier_start, tier_breaks, tier_floor, tier_mmr, tier_cum, mark[s])
                        p_liq_price[i] = price
                else:
                    cushion = balance + prefix + p_liq_price[g0]
                    price = liq_price(cushion, g0, g1, qty, entry_unit, inv_leverage, inverse[s], direction[s], face[s],
                                      taker[s], mm_fraction[s], s, tier_start, tier_breaks, tier_floor, tier_mmr,
                                      tier_cum, mark[s])
                    for i in range(g0, g1):
                        prefix += p_upnl[i] - p_mm[i] - p_fee[i]
                        p_liq_price[i] = price if qty[i] != 0.0 else np.nan
                g0 = g1


# -- the tick engine ----------------------------------------------------------------------------

@njit(**JIT_PARALLEL)
def tick_positions(starts, ends, rows, run, inst, marks, w_state, book_rows, book_liquidate, became):
    """A tick's rows, symbol-major (each symbol's rows one contiguous slice starts[g]:ends[g],
    grouped by wallet): new figures, and each row's change added to its wallet's running state.

    rows: PositionColumns (symbol-major; wallet, symbol, qty, entry_unit, inv_leverage,
    isolated, isolated_margin are read), run: RunningFigures (updated), inst: SymbolTable,
    marks: Marks (face_mark, direction), w_state: n_wallets × WALLET_STATE. An isolated row's
    flag is also written in book order (book_liquidate[book_rows[j]]), and became marks the
    rows that became liquidatable (the engine's events).
    Symbols go one after another (a wallet may hold several); within a symbol, chunks cut at
    wallet boundaries run in parallel, so no two threads ever add to one wallet."""
    s_symbol, s_qty, s_entry_unit, s_inv_leverage = rows.symbol, rows.qty, rows.entry_unit, rows.inv_leverage
    s_isolated, s_isolated_units, s_wallet = rows.isolated, rows.isolated_margin, rows.wallet
    symbol_unit, taker, mm_fraction = inst.unit, inst.taker, inst.mm_fraction
    tier_start, tier_breaks, tier_mmr, tier_cum = inst.tier_start, inst.tier_breaks, inst.tier_mmr, inst.tier_cum
    face_mark, direction = marks.face_mark, marks.direction
    s_upnl, s_mm, s_im, s_fee, s_notional, s_liquidate = run.upnl, run.mm, run.im, run.fee, run.notional, run.liquidate
    chunks = 8
    for g in range(len(starts)):
        lo, hi = starts[g], ends[g]
        for c in prange(chunks):
            a = lo + (hi - lo) * c // chunks
            b = lo + (hi - lo) * (c + 1) // chunks
            while a > lo and a < hi and s_wallet[a] == s_wallet[a - 1]:  # start at a wallet's first row
                a += 1
            while b > lo and b < hi and s_wallet[b] == s_wallet[b - 1]:  # end after a wallet's last row
                b += 1
            for j in range(a, b):
                s = s_symbol[j]
                q = s_qty[j]
                notional, upnl, im, mm, fee = row_figures(q, s_entry_unit[j], s_inv_leverage[j], face_mark[s],
                                                          direction[s], taker[s], mm_fraction[s], s, tier_start,
                                                          tier_breaks, tier_mmr, tier_cum)
                w = s_wallet[j]
                if s_isolated[j]:
                    w_state[w, ISO_UPNL] += upnl - s_upnl[j]
                    flag = isolated_liquidates(q, margin_balance(s_isolated_units[j], symbol_unit[s], upnl), fee, mm)
                    became[j] = flag and not s_liquidate[j]
                    s_liquidate[j] = flag
                    book_liquidate[book_rows[j]] = flag
                else:
                    w_state[w, UPNL] += upnl - s_upnl[j]
                    w_state[w, MM] += mm - s_mm[j]
                    w_state[w, IM] += im - s_im[j]
                    w_state[w, FEE] += fee - s_fee[j]
                    w_state[w, NOTIONAL] += notional - s_notional[j]
                    became[j] = False
                s_upnl[j] = upnl
                s_mm[j] = mm
                s_im[j] = im
                s_fee[j] = fee
                s_notional[j] = notional


@njit(**JIT_PARALLEL)
def tick_accounts(wallets, w_state, packed, liquidates, became):
    """Account figures of `wallets` from their running state (n_wallets × WALLET_STATE) into
    `packed` (n_wallets × ACCOUNT_FIGURES, one row per wallet: a wallet is two cache lines)
    and `liquidates`; became[j]: wallets[j] became liquidatable. Plain arrays, not the
    AccountFigures struct: a tick pays for every array of a struct it hands over."""
    for j in prange(len(wallets)):
        w = wallets[j]
        equity, ratio, available, transfer, total_equity, liquidate = account_figures(
            w_state[w, BALANCE], w_state[w, UPNL], w_state[w, MM], w_state[w, IM], w_state[w, FEE],
            w_state[w, ISO_MARGIN] + w_state[w, ISO_UPNL], w_state[w, OPEN_CROSS] != 0.0, w_state[w, ORDER_MARGIN])
        packed[w, EQUITY] = equity
        packed[w, CROSS_MM] = w_state[w, MM]
        packed[w, CROSS_IM] = w_state[w, IM]
        packed[w, CROSS_FEE] = w_state[w, FEE]
        packed[w, RISK_RATIO] = ratio
        packed[w, AVAILABLE_BALANCE] = available
        packed[w, TRANSFERABLE] = transfer
        packed[w, TOTAL_EQUITY] = total_equity
        became[j] = liquidate and not liquidates[w]
        liquidates[w] = liquidate
