"""numba kernels: per-position figures (docs/model.md §4), isolated/cross checks (§5), liquidation
prices (§6). Arrays in, arrays out; no validation here (the Python layer did it).

Hot path, two passes: `position_pass` computes every row's figures (flat and branch-light,
in parallel over rows); `wallet_pass` walks wallets in parallel, and since a wallet's
positions are one contiguous range (see book.py) every per-account sum is a segmented
reduction done by the one thread that owns the wallet. Both take a subset (rows, wallets)
and write in place, so a tick re-computes only the rows of its symbols and the wallets
holding them.
"""

import numpy as np
from numba import njit, prange

from .config import JIT, JIT_PARALLEL

# The tick engine's per-wallet state, one row per wallet so a wallet costs two cache lines,
# not one per column: running sums of its cross positions' upnl, mm, im, fee, notional, of
# its isolated positions' upnl and margin, whether it has an open cross position, its
# balance and order margin.
UPNL, MM, IM, FEE, NOTIONAL, ISO_UPNL, ISO_MARGIN, OPEN_CROSS, BALANCE, ORDER_MARGIN = range(10)
WALLET_STATE = 10


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
def mm_rate(k, inv_leverage, mm_fraction, tier_mmr, tier_cum):
    """(rate, cum) with mm = notional·rate − cum: tier k's, or fraction·IM (seed 003).

    The one definition of maintenance margin. The tier is looked up by the caller
    unconditionally and the fraction model selected here afterwards: an early return around
    the tier search stops LLVM from if-converting and costs ~5x in the scan.
    """
    rate = tier_mmr[k]
    cum = tier_cum[k]
    if mm_fraction == mm_fraction:  # not NaN
        rate = mm_fraction * inv_leverage
        cum = 0.0
    return rate, cum


@njit(**JIT)
def row_figures(qty, entry_unit, inv_leverage, face_mark, direction, taker, mm_fraction,
                t0, t1, tier_floor, tier_mmr, tier_cum):
    """(notional, upnl, im, mm, fee) of one position (model §4), division-free: the symbol's
    face·P (face/P inverse) and ±1 come per tick, face·E (face/E) and 1/leverage per position.
    All zero when flat, even where the symbol has no mark (NaN)."""
    notional = abs(qty) * face_mark
    upnl = direction * qty * (face_mark - entry_unit)
    im = notional * inv_leverage
    k = tier_of(notional, t0, t1, tier_floor)
    rate, cum = mm_rate(k, inv_leverage, mm_fraction, tier_mmr, tier_cum)
    mm = notional * rate - cum
    fee = notional * taker
    if qty == 0.0:
        notional = 0.0
        upnl = 0.0
        im = 0.0
        mm = 0.0
        fee = 0.0
    return notional, upnl, im, mm, fee


@njit(**JIT)
def account_figures(balance, upnl_sum, mm_sum, im_sum, fee_sum, iso_equity, has_cross, order_margin):
    """(equity, risk_ratio, available_balance, transferable, total_equity, liquidate) of a
    wallet from its sums (model §5)."""
    equity = balance + upnl_sum
    if not has_cross:
        risk_ratio = 0.0
    elif equity <= 0.0:
        risk_ratio = np.inf
    else:
        risk_ratio = (mm_sum + fee_sum) / equity
    return (equity, risk_ratio, max(0.0, equity - im_sum - order_margin),
            max(0.0, min(balance, equity - mm_sum - order_margin)), equity + iso_equity,
            has_cross and equity - fee_sum <= mm_sum)


@njit(**JIT)
def _leg_coefficients(k, qty, entry, leverage, inverse, face, taker, mm_fraction,
                      tier_mmr, tier_cum):
    """Slope and intercept of upnl − mm − fee in t (t = P linear, 1/P inverse) at tier k."""
    a = abs(qty) * face
    if inverse:
        s, e = -qty * face, 1.0 / entry
    else:
        s, e = qty * face, entry
    rate, cum = mm_rate(k, 1.0 / leverage, mm_fraction, tier_mmr, tier_cum)
    return s - a * (rate + taker), cum - s * e


@njit(**JIT)
def _liq_price_single(cushion, qty, entry, leverage, inverse, face, taker, mm_fraction,
                      t0, t1, tier_floor, tier_mmr, tier_cum, mark):
    """One leg: start at the current tier and step toward the root (usually 1–2 steps).

    Within a tier the condition is linear with a slope of fixed sign (mmr + fee < 1), so
    the root lies on one side; stepping back the way we came means the condition jumps
    across zero at the floor between (given maintenance amounts), which is the answer.
    Returns -1.0 when that reasoning does not apply (flat slope) so the caller walks all.
    """
    a = abs(qty) * face
    t_now = 1.0 / mark if inverse else mark
    k = tier_of(a * t_now, t0, t1, tier_floor)
    step = 0
    for _ in range(t1 - t0 + 1):
        slope, icpt = _leg_coefficients(k, qty, entry, leverage, inverse, face, taker, mm_fraction,
                                        tier_mmr, tier_cum)
        if slope == 0.0:
            return -1.0
        root = -(icpt + cushion) / slope
        lo = tier_floor[k] / a
        hi = tier_floor[k + 1] / a if k + 1 < t1 else np.inf
        want = -1 if root < lo else (1 if root > hi else 0)
        if want == 0:
            return root
        if step != 0 and want != step:
            return lo if step == 1 else hi
        if want == -1 and k == t0:
            return np.nan  # the root is at a negative price
        step = want
        k += want
    return np.nan


@njit(**JIT)
def liq_price(cushion, i0, i1, qty, entry, leverage, inverse, face, taker, mm_fraction,
              t0, t1, tier_floor, tier_mmr, tier_cum, mark):
    """Mark price of one symbol at which cushion + Σ_legs(upnl − mm − fee) = 0 (model §6).

    Legs are rows i0..i1-1 (one position, or both legs of a hedge-mode symbol) moving
    with the price. In t (= P, or 1/P for inverse contracts) the function is linear between
    tier breakpoints, so walk the intervals in order, solve each in closed form and keep the
    root inside its interval; at a jump of given maintenance amounts the breakpoint itself is
    the boundary. Several roots (possible only with hedged legs) → the one nearest the mark.
    NaN when no positive finite price qualifies.
    """
    if i1 - i0 == 1 and qty[i0] != 0.0:
        t = _liq_price_single(cushion, qty[i0], entry[i0], leverage[i0], inverse, face, taker, mm_fraction,
                              t0, t1, tier_floor, tier_mmr, tier_cum, mark)
        if t != -1.0:
            if not (t > 0.0 and t < np.inf):
                return np.nan
            price = 1.0 / t if inverse else t
            return price if price < np.inf else np.nan
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
def position_pass(rows, all_rows, symbol, qty, entry_unit, inv_leverage, isolated, isolated_units,
                  symbol_unit, face_mark, direction, taker, mm_fraction,
                  tier_start, tier_floor, tier_mmr, tier_cum, with_positions,
                  p_notional, p_upnl, p_im, p_mm, p_fee, p_roe, p_margin_balance, p_risk_ratio, p_liquidate):
    """Per-position figures (model §4) and isolated checks (§5) for every row, or for `rows`.

    Division-free: the symbol's face·P (face/P inverse) comes per tick in face_mark, the
    position's face·E (face/E) and 1/leverage from the book. p_upnl, p_im, p_mm, p_fee and
    p_liquidate are always written (the wallet pass sums them); the rest when with_positions.
    A cross row's p_liquidate is set by wallet_pass.
    """
    n = len(qty) if all_rows else len(rows)
    for j in prange(n):
        i = np.int64(j) if all_rows else rows[j]
        s = symbol[i]
        q = qty[i]
        notional, upnl, im, mm, fee = row_figures(q, entry_unit[i], inv_leverage[i], face_mark[s], direction[s],
                                                  taker[s], mm_fraction[s], tier_start[s], tier_start[s + 1],
                                                  tier_floor, tier_mmr, tier_cum)
        p_upnl[i] = upnl
        p_im[i] = im
        p_mm[i] = mm
        p_fee[i] = fee
        liquidate = False
        if isolated[i]:
            margin_balance = isolated_units[i] * symbol_unit[s] + upnl
            liquidate = q != 0.0 and margin_balance - fee <= mm
            if with_positions:
                p_margin_balance[i] = margin_balance
                if q == 0.0:
                    p_risk_ratio[i] = 0.0
                elif margin_balance <= 0.0:
                    p_risk_ratio[i] = np.inf
                else:
                    p_risk_ratio[i] = (mm + fee) / margin_balance
        elif with_positions:
            p_margin_balance[i] = np.nan
            p_risk_ratio[i] = np.nan
        p_liquidate[i] = liquidate
        if with_positions:
            p_notional[i] = notional
            p_roe[i] = 0.0 if q == 0.0 else upnl / (abs(q) * entry_unit[i] * inv_leverage[i])


@njit(**JIT_PARALLEL)
def wallet_pass(wallets, pos_start, balance_units, wallet_unit, order_margin,
                symbol, qty, entry, leverage, isolated, isolated_units,
                inverse, face, taker, mm_fraction, symbol_unit,
                tier_start, tier_floor, tier_mmr, tier_cum, mark,
                p_upnl, p_im, p_mm, p_fee, with_liq_price, p_liq_price, p_liquidate,
                a_equity, a_cross_mm, a_cross_im, a_cross_fee, a_risk_ratio,
                a_available, a_transferable, a_total_equity, a_liquidate,
                with_sums, p_notional, w_state):
    """Account figures (model §5) of `wallets` from the position pass, cross flags onto their
    positions, and liquidation prices (§6). Each thread owns whole wallets: segmented sums.
    with_sums also keeps each wallet's sums (the tick engine's starting point for deltas)."""
    for j in prange(len(wallets)):
        w = wallets[j]
        start, end = pos_start[w], pos_start[w + 1]
        upnl_sum = 0.0
        mm_sum = 0.0
        im_sum = 0.0
        fee_sum = 0.0
        iso_equity = 0.0
        has_cross = False
        for i in range(start, end):
            if isolated[i]:
                iso_equity += isolated_units[i] * symbol_unit[symbol[i]] + p_upnl[i]
            else:
                upnl_sum += p_upnl[i]
                mm_sum += p_mm[i]
                im_sum += p_im[i]
                fee_sum += p_fee[i]
                has_cross = has_cross or qty[i] != 0.0
        balance = balance_units[w] * wallet_unit[w]
        equity, risk_ratio, available, transferable, total_equity, liquidate = account_figures(
            balance, upnl_sum, mm_sum, im_sum, fee_sum, iso_equity, has_cross, order_margin[w])
        a_equity[w] = equity
        a_cross_mm[w] = mm_sum
        a_cross_im[w] = im_sum
        a_cross_fee[w] = fee_sum
        a_risk_ratio[w] = risk_ratio
        a_available[w] = available
        a_transferable[w] = transferable
        a_total_equity[w] = total_equity
        a_liquidate[w] = liquidate
        if with_sums:
            iso_margin = 0.0
            iso_upnl = 0.0
            cross_notional = 0.0
            for i in range(start, end):
                if isolated[i]:
                    iso_margin += isolated_units[i] * symbol_unit[symbol[i]]
                    iso_upnl += p_upnl[i]
                else:
                    cross_notional += p_notional[i]
            w_state[w, UPNL] = upnl_sum
            w_state[w, MM] = mm_sum
            w_state[w, IM] = im_sum
            w_state[w, FEE] = fee_sum
            w_state[w, NOTIONAL] = cross_notional
            w_state[w, ISO_UPNL] = iso_upnl
            w_state[w, ISO_MARGIN] = iso_margin
            w_state[w, OPEN_CROSS] = 1.0 if has_cross else 0.0
            w_state[w, BALANCE] = balance
            w_state[w, ORDER_MARGIN] = order_margin[w]
        for i in range(start, end):
            if not isolated[i]:
                p_liquidate[i] = liquidate and qty[i] != 0.0

        if with_liq_price:
            # A cross group's cushion is balance + Σ_other symbols(upnl − mm − fee), summed as
            # prefix + suffix of the other groups: subtracting the group from the wallet total
            # would cancel catastrophically when the group dominates the wallet.
            # Reverse pass: the suffix of each group, parked in its first row's p_liq_price.
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
                    cushion = balance + prefix + p_liq_price[g0]
                    price = liq_price(cushion, g0, g1, qty, entry, leverage, inverse[s], face[s], taker[s],
                                      mm_fraction[s], t0, t1, tier_floor, tier_mmr, tier_cum, mark[s])
                    for i in range(g0, g1):
                        prefix += p_upnl[i] - p_mm[i] - p_fee[i]
                        p_liq_price[i] = price if qty[i] != 0.0 else np.nan
                g0 = g1


@njit(**JIT_PARALLEL)
def tick_rows(starts, ends, s_symbol, s_qty, s_entry_unit, s_inv_leverage, s_isolated, s_isolated_units,
              s_wallet, symbol_unit, face_mark, direction, taker, mm_fraction, tier_start, tier_floor, tier_mmr,
              tier_cum, s_upnl, s_mm, s_im, s_fee, s_notional, s_liquidate, w_state, sym_rows, p_liquidate,
              s_became):
    """A tick's rows, symbol-major (each symbol's rows one contiguous slice, grouped by
    wallet): new figures, and each row's change added to its wallet's running state. An
    isolated row's flag is also written in book order, and s_became marks the rows that
    became liquidatable (the engine's events).
    Symbols go one after another (a wallet may hold several); within a symbol, chunks cut at
    wallet boundaries run in parallel, so no two threads ever add to one wallet."""
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
                                                          direction[s], taker[s], mm_fraction[s], tier_start[s],
                                                          tier_start[s + 1], tier_floor, tier_mmr, tier_cum)
                w = s_wallet[j]
                if s_isolated[j]:
                    w_state[w, ISO_UPNL] += upnl - s_upnl[j]
                    flag = q != 0.0 and s_isolated_units[j] * symbol_unit[s] + upnl - fee <= mm
                    s_became[j] = flag and not s_liquidate[j]
                    s_liquidate[j] = flag
                    p_liquidate[sym_rows[j]] = flag
                else:
                    w_state[w, UPNL] += upnl - s_upnl[j]
                    w_state[w, MM] += mm - s_mm[j]
                    w_state[w, IM] += im - s_im[j]
                    w_state[w, FEE] += fee - s_fee[j]
                    w_state[w, NOTIONAL] += notional - s_notional[j]
                    s_became[j] = False
                s_upnl[j] = upnl
                s_mm[j] = mm
                s_im[j] = im
                s_fee[j] = fee
                s_notional[j] = notional


@njit(**JIT_PARALLEL)
def tick_wallets(wallets, w_state, accounts, a_liquidate, became):
    """Account figures of `wallets` from their running state, into the packed `accounts`
    rows (equity, cross_mm, cross_im, cross_fee, risk_ratio, available_balance, transferable,
    total_equity); became[j]: wallets[j] became liquidatable."""
    for j in prange(len(wallets)):
        w = wallets[j]
        equity, risk_ratio, available, transferable, total_equity, liquidate = account_figures(
            w_state[w, BALANCE], w_state[w, UPNL], w_state[w, MM], w_state[w, IM], w_state[w, FEE],
            w_state[w, ISO_MARGIN] + w_state[w, ISO_UPNL], w_state[w, OPEN_CROSS] != 0.0, w_state[w, ORDER_MARGIN])
        accounts[w, 0] = equity
        accounts[w, 1] = w_state[w, MM]
        accounts[w, 2] = w_state[w, IM]
        accounts[w, 3] = w_state[w, FEE]
        accounts[w, 4] = risk_ratio
        accounts[w, 5] = available
        accounts[w, 6] = transferable
        accounts[w, 7] = total_equity
        became[j] = liquidate and not a_liquidate[w]
        a_liquidate[w] = liquidate
