"""numba kernels: per-position figures (SPEC §2), isolated/cross checks (§3), liquidation
prices (§4). Arrays in, arrays out; no validation here (the Python layer did it).

Hot path: `scan_wallets` walks wallets in parallel; a wallet's positions are one contiguous
range (see book.py), so every per-account sum is a segmented reduction done by the one
thread that owns the wallet. Account outputs are indexed by wallet id, so scanning a subset
of wallets (a tick) updates those rows in place and leaves the rest as they were.
"""

import numpy as np
from numba import njit, prange

from .config import JIT, JIT_PARALLEL


@njit(**JIT)
def tier_of(notional, t0, t1, tier_floor):
    """Index of the last tier in [t0, t1) whose floor is <= notional (floors ascend).

    Counting instead of searching: no data-dependent branch, ~4x faster on random rows.
    """
    k = t0
    for j in range(t0 + 1, t1):
        k += tier_floor[j] <= notional
    return k


@njit(**JIT)
def mm_terms(notional, leverage, mm_fraction, t0, t1, tier_floor, tier_mmr, tier_cum):
    """(rate, cum) with mm = notional·rate − cum: the tier's, or fraction·IM (seed 003).

    The tier is looked up unconditionally and the fraction model selected afterwards: an
    early return here stops LLVM from if-converting and costs ~5x in the scan.
    """
    k = tier_of(notional, t0, t1, tier_floor)
    rate = tier_mmr[k]
    cum = tier_cum[k]
    if mm_fraction == mm_fraction:  # not NaN
        rate = mm_fraction / leverage
        cum = 0.0
    return rate, cum


@njit(**JIT)
def position_figures(qty, entry, leverage, mark, inverse, face, taker, mm_fraction,
                     t0, t1, tier_floor, tier_mmr, tier_cum):
    """(notional, upnl, im, mm, fee) of one position; all 0 when flat."""
    size = abs(qty) * face
    if inverse:
        notional = size / mark
        upnl = qty * face * (1.0 / entry - 1.0 / mark)
    else:
        notional = size * mark
        upnl = qty * face * (mark - entry)
    rate, cum = mm_terms(notional, leverage, mm_fraction, t0, t1, tier_floor, tier_mmr, tier_cum)
    mm = notional * rate - cum
    if qty == 0.0:  # flat: zeros even where the mark is unknown (NaN)
        notional = 0.0
        upnl = 0.0
        mm = 0.0
    return notional, upnl, notional / leverage, mm, notional * taker


@njit(**JIT)
def entry_margin(qty, entry, leverage, inverse, face):
    """Initial margin at entry: the base of the PnL% (roe) figure."""
    value = 1.0 / entry if inverse else entry
    return abs(qty) * face * value / leverage


@njit(**JIT)
def _leg_coefficients(k, qty, entry, leverage, inverse, face, taker, mm_fraction,
                      tier_mmr, tier_cum):
    """Slope and intercept of upnl − mm − fee in t (t = P linear, 1/P inverse) at tier k."""
    a = abs(qty) * face
    if inverse:
        s, e = -qty * face, 1.0 / entry
    else:
        s, e = qty * face, entry
    if mm_fraction == mm_fraction:
        rate, cum = mm_fraction / leverage, 0.0
    else:
        rate, cum = tier_mmr[k], tier_cum[k]
    return s - a * (rate + taker), cum - s * e


@njit(**JIT)
def liq_price(cushion, i0, i1, qty, entry, leverage, inverse, face, taker, mm_fraction,
              t0, t1, tier_floor, tier_mmr, tier_cum, mark):
    """Mark price of one symbol at which cushion + Σ_legs(upnl − mm − fee) = 0 (SPEC §4).

    Legs are rows i0..i1-1 (one position, or both legs of a hedge-mode symbol) moving
    with the price. In t (= P, or 1/P for inverse contracts) the function is linear between
    tier breakpoints, so walk the intervals in order, solve each in closed form and keep the
    root inside its interval; at a jump of given maintenance amounts the breakpoint itself is
    the boundary. Several roots (possible only with hedged legs) → the one nearest the mark.
    NaN when no positive finite price qualifies.
    """
    n_legs = i1 - i0
    tiered = mm_fraction != mm_fraction
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
            b, c = _leg_coefficients(k0 if leg == 0 else k1, qty[i], entry[i], leverage[i], inverse,
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


@njit(**JIT_PARALLEL)
def scan_wallets(wallets, pos_start, balance_units, wallet_unit, order_margin,
                 symbol, qty, entry, leverage, isolated, isolated_units,
                 inverse, face, taker, mm_fraction, symbol_unit,
                 tier_start, tier_floor, tier_mmr, tier_cum, mark,
                 with_positions, with_liq_price,
                 p_notional, p_upnl, p_im, p_mm, p_fee, p_roe, p_margin_balance, p_risk_ratio,
                 p_liq_price, p_liquidate,
                 a_equity, a_cross_mm, a_cross_im, a_cross_fee, a_risk_ratio,
                 a_available, a_transferable, a_total_equity, a_liquidate):
    """Figures of SPEC §2–4 for the positions of `wallets` and for those wallets.

    p_liquidate and every a_* are always written; the other p_* only when with_positions
    (p_liq_price when with_liq_price). Cross positions get NaN margin_balance/risk_ratio.
    """
    for j in prange(len(wallets)):
        w = wallets[j]
        start, end = pos_start[w], pos_start[w + 1]
        balance = balance_units[w] * wallet_unit[w]
        upnl_sum = 0.0
        mm_sum = 0.0
        im_sum = 0.0
        fee_sum = 0.0
        iso_equity = 0.0
        has_cross = False
        for i in range(start, end):
            s = symbol[i]
            q = qty[i]
            notional, upnl, im, mm, fee = position_figures(
                q, entry[i], leverage[i], mark[s], inverse[s], face[s], taker[s], mm_fraction[s],
                tier_start[s], tier_start[s + 1], tier_floor, tier_mmr, tier_cum)
            if isolated[i]:
                margin_balance = isolated_units[i] * symbol_unit[s] + upnl
                iso_equity += margin_balance
                p_liquidate[i] = q != 0.0 and margin_balance - fee <= mm
                if with_positions:
                    p_margin_balance[i] = margin_balance
                    if q == 0.0:
                        p_risk_ratio[i] = 0.0
                    elif margin_balance <= 0.0:
                        p_risk_ratio[i] = np.inf
                    else:
                        p_risk_ratio[i] = (mm + fee) / margin_balance
            else:
                upnl_sum += upnl
                mm_sum += mm
                im_sum += im
                fee_sum += fee
                has_cross = has_cross or q != 0.0
                if with_positions:
                    p_margin_balance[i] = np.nan
                    p_risk_ratio[i] = np.nan
            if with_positions:
                p_notional[i] = notional
                p_upnl[i] = upnl
                p_im[i] = im
                p_mm[i] = mm
                p_fee[i] = fee
                p_roe[i] = 0.0 if q == 0.0 else upnl / entry_margin(q, entry[i], leverage[i], inverse[s], face[s])

        equity = balance + upnl_sum
        liquidate = has_cross and equity - fee_sum <= mm_sum
        om = order_margin[w]
        a_equity[w] = equity
        a_cross_mm[w] = mm_sum
        a_cross_im[w] = im_sum
        a_cross_fee[w] = fee_sum
        if not has_cross:
            a_risk_ratio[w] = 0.0
        elif equity <= 0.0:
            a_risk_ratio[w] = np.inf
        else:
            a_risk_ratio[w] = (mm_sum + fee_sum) / equity
        a_available[w] = max(0.0, equity - im_sum - om)
        a_transferable[w] = max(0.0, min(balance, equity - mm_sum - om))
        a_total_equity[w] = equity + iso_equity
        a_liquidate[w] = liquidate
        for i in range(start, end):
            if not isolated[i]:
                p_liquidate[i] = liquidate and qty[i] != 0.0

        if with_liq_price:
            cross_cushion = equity - mm_sum - fee_sum
            g0 = start
            while g0 < end:  # groups: the rows of one symbol (hedge legs are adjacent)
                s = symbol[g0]
                g1 = g0 + 1
                while g1 < end and symbol[g1] == s:
                    g1 += 1
                t0, t1 = tier_start[s], tier_start[s + 1]
                if isolated[g0]:
                    for i in range(g0, g1):
                        price = np.nan
                        if qty[i] != 0.0:
                            price = liq_price(isolated_units[i] * symbol_unit[s], i, i + 1, qty, entry,
                                              leverage, inverse[s], face[s], taker[s], mm_fraction[s],
                                              t0, t1, tier_floor, tier_mmr, tier_cum, mark[s])
                        p_liq_price[i] = price
                else:
                    # cushion from everything else in the wallet: balance + Σ_other symbols(upnl − mm − fee)
                    own = 0.0
                    for i in range(g0, g1):
                        _, upnl, _, mm, fee = position_figures(
                            qty[i], entry[i], leverage[i], mark[s], inverse[s], face[s], taker[s],
                            mm_fraction[s], t0, t1, tier_floor, tier_mmr, tier_cum)
                        own += upnl - mm - fee
                    price = liq_price(cross_cushion - own, g0, g1, qty, entry, leverage, inverse[s],
                                      face[s], taker[s], mm_fraction[s], t0, t1, tier_floor, tier_mmr,
                                      tier_cum, mark[s])
                    for i in range(g0, g1):
                        p_liq_price[i] = price if qty[i] != 0.0 else np.nan
                g0 = g1
