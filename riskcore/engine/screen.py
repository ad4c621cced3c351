"""Which wallets a tick that moves most of the book can change (docs/model.md §8.1).

At an exact pass (the base) every wallet gets a key: the smallest, over its cross account
and its open isolated positions, of `(|slack| − ε) / G`, where slack is what stands between
it and its trigger (`equity − fee − mm`; isolated `margin balance − fee − mm`), ε a
rounding margin (1e-9 of the magnitudes summed) and G its sensitivity: Σ notional ·
(1 + taker fee rate + the steepest slope of mm per notional in its symbol). When every mark
is within a relative move δ of the base, each slack has moved by at most G·δ/(1 − δ) (a
position's upnl and notional move by at most notional·δ, inverse contracts by
notional·δ/(1 − δ); fee and mm follow notional with those slopes, and tiered mm is
continuous in notional), so a wallet whose key exceeds δ/(1 − δ) has every flag it had at
the base: only the wallets with a key at most that, those whose flags a tick of a few
symbols has changed since, and those whose money a close has changed need an exact look. Where a symbol's maintenance amounts are given
and jump at a tier floor, its holders are always looked at.
"""

import numpy as np
from numba import njit

from ..book import Book
from ..config import JIT

_EPS = 1e-9     # rounding margin of a slack, relative to the magnitudes it sums
_SAFETY = 1e-6  # relative margin on the bound itself


class Screen:
    """The base of the last exact pass and each wallet's key (see the module)."""

    def __init__(self, book: Book):
        self.book = book
        pos, inst = book.positions, book.instruments
        n_sym, self.n_wallets = len(inst), len(book.wallets)
        self.iso_rows = np.flatnonzero(pos.isolated)
        # steepest mm per notional in each symbol: its largest tier rate, or fraction · 1/leverage
        steepest = np.zeros(n_sym)
        if len(inst.tier_mmr):
            first = inst.tier_start[:-1][np.diff(inst.tier_start) > 0]
            steepest[np.diff(inst.tier_start) > 0] = np.maximum.reduceat(inst.tier_mmr, first)
        fraction = ~np.isnan(inst.mm_im_fraction)
        if fraction.any() and len(pos.qty):
            steepest[fraction] = inst.mm_im_fraction[fraction] * float(pos.inv_leverage.max())
        self.slope = 1.0 + inst.taker_fee_rate + steepest
        self.jumps = _tier_jumps(book)
        self.base = self.key = self.base_flags = None  # rebase() sets them
        self.changed = np.zeros(self.n_wallets, dtype=bool)  # money or positions changed since the base

    def rebase(self, mark: np.ndarray, out) -> None:
        """Keys from an exact pass's figures (`out`, every row current) at `mark`."""
        book, pos, p, a = self.book, self.book.positions, out.positions, out.accounts
        self.key = _keys(book.wallets.pos_start, pos.symbol, pos.qty, pos.isolated, pos.isolated_margin, p["notional"],
                         p["upnl"], p["mm"], p["fee"], self.slope, book.symbol_unit, self.jumps,
                         book.wallets.balance * book.wallet_unit, a["equity"], a["cross_fee"], a["cross_mm"])
        self.base = mark.copy()
        self.base_flags = (a["liquidate"].copy(), p["liquidate"][self.iso_rows].copy())
        self.changed[:] = False

    def candidates(self, mark: np.ndarray, out, limit: int) -> np.ndarray | None:
        """The wallets (sorted) whose flags may differ at `mark` from what `out` holds, or None
        when there are more than `limit` of them (an exact pass is cheaper)."""
        known = np.isfinite(self.base) & np.isfinite(mark)
        moved = float(np.max(np.abs(mark[known] / self.base[known] - 1.0), initial=0.0))
        if moved >= 0.5:
            return None
        bound = moved / (1.0 - moved) * (1.0 + _SAFETY)
        look = (self.key <= bound) | self.changed | (out.accounts["liquidate"] != self.base_flags[0])
        moved_iso = self.iso_rows[out.positions["liquidate"][self.iso_rows] != self.base_flags[1]]
        look[self.book.positions.wallet[moved_iso]] = True
        wallets = np.flatnonzero(look)
        return None if len(wallets) > limit else wallets


@njit(**JIT)
def _keys(pos_start, symbol, qty, isolated, isolated_margin, notional, upnl, mm, fee, slope, unit, jumps, balance,
          equity, cross_fee, cross_mm):
    """Each wallet's key (see the module), one pass over its rows."""
    key = np.empty(len(pos_start) - 1)
    for w in range(len(pos_start) - 1):
        sensitivity, size, open_cross, smallest = 0.0, abs(balance[w]), False, np.inf
        for i in range(pos_start[w], pos_start[w + 1]):
            if qty[i] == 0.0:
                continue
            s = symbol[i]
            if jumps[s]:
                smallest = -np.inf
            g = notional[i] * slope[s]
            terms = notional[i] + abs(upnl[i]) + abs(mm[i]) + fee[i]
            if isolated[i]:
                margin = isolated_margin[i] * unit[s] + upnl[i]
                smallest = min(smallest, _ratio(abs(margin - fee[i] - mm[i]) - _EPS * (abs(margin) + terms), g))
            else:
                open_cross = True
                sensitivity += g
                size += terms
        if open_cross:
            slack = abs(equity[w] - cross_fee[w] - cross_mm[w]) - _EPS * size
            smallest = min(smallest, _ratio(slack, sensitivity))
        key[w] = smallest
    return key


@njit(**JIT)
def _ratio(slack, sensitivity):
    """slack / sensitivity; a slack that no move changes is ∞ if clear of 0, else −∞."""
    if sensitivity > 0:
        return slack / sensitivity
    return np.inf if slack > 0 else -np.inf


def _tier_jumps(book: Book) -> np.ndarray:
    """Per symbol: its maintenance margin jumps at a tier floor (given maintenance amounts
    that are not the continuous ones, model §4.2)."""
    inst = book.instruments
    jumps = np.zeros(len(inst), dtype=bool)
    for s in range(len(inst)):
        lo, hi = inst.tier_start[s], inst.tier_start[s + 1]
        if hi - lo < 2 or not np.isnan(inst.mm_im_fraction[s]):
            continue
        floor, mmr, cum = inst.tier_floor[lo + 1:hi], inst.tier_mmr[lo:hi], inst.tier_cum[lo:hi]
        gap = (mmr[1:] * floor - cum[1:]) - (mmr[:-1] * floor - cum[:-1])
        jumps[s] = bool(np.any(np.abs(gap) > 1e-9 * (mmr[1:] * floor + 1.0)))
    return jumps
