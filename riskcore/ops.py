"""Margin operations (docs/model.md §7): a batch of requests applied in order to a book.

The request table is checked and resolved to dense ids in Python (vectorised); a numba
pass then applies the requests, each thread owning whole wallets and taking that wallet's
requests in their batch order (requests of different wallets never interact). Every
request gets one outcome; a rejected request changes nothing; money moves in exact units.
"""

from dataclasses import replace
from typing import NamedTuple

import numpy as np
import polars as pl
from numba import njit, prange

from .book import MODES, SIDES, Book, wallet_of
from .config import JIT, JIT_PARALLEL
from .io import as_book, is_path, read_table
from .errors import BookError
from .keys import group_key, group_range, position_key
from .kernels import (IM, MM, UPNL, WALLET_STATE, PositionColumns, SymbolTable, WalletColumns, available_balance,
                      free_margin, is_fraction_model, isolated_liquidates, maintenance_margin, margin_balance,
                      tier_of, transferable)
from .money import to_units, units_to_decimal
from .scan import ScanArrays, scan_into
from .tables import as_float64, as_frame, int_col, lookup, str_col

OPS = ("add_margin", "remove_margin", "set_leverage", "set_margin_mode", "transfer_in", "transfer_out")
ADD, REMOVE, LEVERAGE, MODE, TRANSFER_IN, TRANSFER_OUT = range(len(OPS))
REASONS = ("", "unknown_op", "unknown_account", "unknown_symbol", "unknown_position", "bad_value",
           "not_isolated", "flat_position", "insufficient_available", "insufficient_margin",
           "would_liquidate", "leverage_above_tier_max", "open_position", "open_orders",
           "insufficient_transferable", "would_overflow")
(OK, UNKNOWN_OP, UNKNOWN_ACCOUNT, UNKNOWN_SYMBOL, UNKNOWN_POSITION, BAD_VALUE, NOT_ISOLATED, FLAT,
 SHORT_AVAILABLE, SHORT_MARGIN, WOULD_LIQUIDATE, ABOVE_TIER_MAX, OPEN_POSITION, OPEN_ORDERS,
 SHORT_TRANSFERABLE, WOULD_OVERFLOW) = range(len(REASONS))
INT64_MIN, INT64_MAX = np.int64(-(2**63)), np.int64(2**63 - 1)


@njit(**JIT)
def add_overflows(a, b):
    """Whether int64 a + b leaves int64 (numba's sum would wrap); tested before adding."""
    return (b > 0 and a > INT64_MAX - b) or (b < 0 and a < INT64_MIN - b)


@njit(**JIT)
def sub_overflows(a, b):
    """Whether int64 a - b leaves int64."""
    return (b < 0 and a > INT64_MAX + b) or (b > 0 and a < INT64_MIN + b)


@njit(**JIT)
def removal_unsafe(qty, margin_after, fee, mm):
    """remove_margin's check (model §7.3): the position would be liquidatable with
    `margin_after` as its margin balance (the one trigger), or a figure is NaN (overflowed
    inputs), so the removal is not proven safe."""
    return isolated_liquidates(qty, margin_after, fee, mm) or (
        qty != 0.0 and not (margin_after - fee == margin_after - fee and mm == mm))


class Requests(NamedTuple):
    """A request batch resolved to dense ids, as apply_kernel takes it (one row per request;
    reason is in and out: non-zero when rejected while preparing the table)."""
    group_start: np.ndarray        # int64: order[group_start[g]:group_start[g+1]] are one wallet's requests
    order: np.ndarray              # int64 request indices, wallet by wallet, in batch order
    op: np.ndarray                 # int8, OPS
    row: np.ndarray                # int64 position row (set_margin_mode: first row of the group)
    row_end: np.ndarray            # int64 (set_margin_mode: end of the group's rows)
    value: np.ndarray              # float: a leverage
    units: np.ndarray              # int64 money units of a money op
    target_isolated: np.ndarray    # bool, set_margin_mode
    wallet: np.ndarray             # int64
    has_orders: np.ndarray         # bool: resting orders in the (wallet, symbol)
    reason: np.ndarray             # int8, REASONS
    accepted: np.ndarray           # bool, out
    moved: np.ndarray              # int64 money units, out


@njit(**JIT_PARALLEL)
def apply_kernel(req, wal, pos, inst, fig, state):
    """Apply requests grouped by wallet (req: Requests). The book's columns come as copies the
    kernel changes in place: wal (WalletColumns: balance), pos (PositionColumns: leverage,
    isolated, isolated_margin), fig (PositionFigures at the book's marks: im, mm) and state
    (the scan's n_wallets × WALLET_STATE sums: UPNL, IM, MM). Per-wallet state is updated as
    requests are accepted, so each check sees every earlier request of its wallet."""
    group_start, order, op, row, row_end = req.group_start, req.order, req.op, req.row, req.row_end
    value, units, target_isolated, reason = req.value, req.units, req.target_isolated, req.reason
    wallet, has_orders, accepted, moved = req.wallet, req.has_orders, req.accepted, req.moved
    balance, wallet_unit, order_margin = wal.balance, wal.unit, wal.order_margin
    symbol, qty, leverage, isolated, isolated_margin = pos.symbol, pos.qty, pos.leverage, pos.isolated, \
        pos.isolated_margin
    symbol_unit, mm_fraction, tier_start, tier_breaks = inst.unit, inst.mm_fraction, inst.tier_start, inst.tier_breaks
    tier_mmr, tier_cum, tier_max_leverage = inst.tier_mmr, inst.tier_cum, inst.tier_max_leverage
    notional, upnl, im, mm, fee = fig.notional, fig.upnl, fig.im, fig.mm, fig.fee
    for g in prange(len(group_start) - 1):
        for j in range(group_start[g], group_start[g + 1]):
            r = order[j]
            if reason[r] != 0:  # rejected while preparing the table
                continue
            w = wallet[r]
            unit = wallet_unit[w]
            equity = balance[w] * unit + state[w, UPNL]
            om = order_margin[w]
            available = available_balance(equity, state[w, IM], om)
            can_transfer = transferable(balance[w] * unit, equity, state[w, MM], om)
            p = row[r]
            k = op[r]
            amount = 0
            code = 0
            if k == TRANSFER_IN:
                if add_overflows(balance[w], units[r]):
                    code = WOULD_OVERFLOW
                else:
                    amount = units[r]
                    balance[w] += amount
            elif k == TRANSFER_OUT:
                if units[r] * unit > can_transfer:
                    code = SHORT_TRANSFERABLE
                elif sub_overflows(balance[w], units[r]):
                    code = WOULD_OVERFLOW
                else:
                    amount = units[r]
                    balance[w] -= amount
            elif k == ADD:
                if not isolated[p]:
                    code = NOT_ISOLATED
                elif qty[p] == 0.0:
                    code = FLAT
                elif units[r] * unit > available:
                    code = SHORT_AVAILABLE
                elif sub_overflows(balance[w], units[r]) or add_overflows(isolated_margin[p], units[r]):
                    code = WOULD_OVERFLOW
                else:
                    amount = units[r]
                    balance[w] -= amount
                    isolated_margin[p] += amount
            elif k == REMOVE:
                if not isolated[p]:
                    code = NOT_ISOLATED
                elif units[r] > isolated_margin[p]:
                    code = SHORT_MARGIN
                elif removal_unsafe(qty[p], margin_balance(isolated_margin[p] - units[r], symbol_unit[symbol[p]],
                                                           upnl[p]), fee[p], mm[p]):
                    code = WOULD_LIQUIDATE
                elif add_overflows(balance[w], units[r]) or sub_overflows(isolated_margin[p], units[r]):
                    code = WOULD_OVERFLOW
                else:
                    amount = units[r]
                    balance[w] += amount
                    isolated_margin[p] -= amount
            elif k == LEVERAGE:
                s = symbol[p]
                lev = value[r]
                t = tier_of(notional[p], s, tier_start, tier_breaks)
                if lev > tier_max_leverage[t]:
                    code = ABOVE_TIER_MAX
                else:
                    new_im = notional[p] / lev
                    new_mm = mm[p]
                    if is_fraction_model(mm_fraction[s]):  # fraction model: mm follows leverage
                        new_mm = maintenance_margin(notional[p], t, 1.0 / lev, mm_fraction[s], tier_mmr, tier_cum)
                    if isolated[p]:
                        # lowering leverage: top the margin up to N/L from the cross wallet (model §7.3)
                        have = margin_balance(isolated_margin[p], symbol_unit[s], upnl[p])
                        if lev < leverage[p] and have < new_im:
                            need_units = np.ceil((new_im - have) / unit)
                            need = np.int64(need_units) if need_units < 2.0**63 else INT64_MAX
                            if need_units * unit > available:
                                code = SHORT_AVAILABLE
                            elif (need_units >= 2.0**63 or sub_overflows(balance[w], need)
                                  or add_overflows(isolated_margin[p], need)):
                                code = WOULD_OVERFLOW
                            else:
                                amount = need
                                balance[w] -= need
                                isolated_margin[p] += need
                    elif lev < leverage[p] and free_margin(equity, state[w, IM] - im[p] + new_im, om) < 0.0:
                        code = SHORT_AVAILABLE
                    if code == 0:
                        if not isolated[p]:
                            state[w, IM] += new_im - im[p]
                            state[w, MM] += new_mm - mm[p]
                        im[p] = new_im
                        mm[p] = new_mm
                        leverage[p] = lev
            elif k == MODE:
                for i in range(p, row_end[r]):
                    if qty[i] != 0.0:
                        code = OPEN_POSITION
                if code == 0 and has_orders[r]:
                    code = OPEN_ORDERS
                if code == 0 and not target_isolated[r]:  # a flat row's leftover margin goes home
                    back = balance[w]
                    for i in range(p, row_end[r]):
                        if isolated[i]:
                            if add_overflows(back, isolated_margin[i]) or add_overflows(amount, isolated_margin[i]):
                                code = WOULD_OVERFLOW
                                break
                            back += isolated_margin[i]
                            amount += isolated_margin[i]
                    if code != 0:
                        amount = 0
                if code == 0:
                    for i in range(p, row_end[r]):
                        if isolated[i] and not target_isolated[r]:
                            balance[w] += isolated_margin[i]
                            isolated_margin[i] = 0
                        isolated[i] = target_isolated[r]
            reason[r] = code
            accepted[r] = code == 0
            moved[r] = amount


def _values(df: pl.DataFrame, table: str, needed: np.ndarray | None = None) -> np.ndarray:
    """The value column as floats; NaN/inf/null stay (those requests are rejected, not raised).
    Without the column, a table where any request needs a value (`needed`) is refused."""
    if "value" not in df.columns:
        if needed is not None and needed.any():
            raise BookError(table, "value", "missing column (every op but set_margin_mode needs a value)",
                            np.flatnonzero(needed))
        return np.full(df.height, np.nan)
    s = df["value"]
    if not (s.dtype.is_numeric() or isinstance(s.dtype, pl.Decimal) or s.dtype == pl.Null):
        raise BookError(table, "value", f"expected numbers, got {s.dtype}")
    return as_float64(s).fill_null(np.nan).to_numpy()


def _search(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """np.searchsorted with the needles sorted first: random probes into a 10M-row key
    array miss cache on every step; sorted probes walk it in order (~10x faster)."""
    order = np.argsort(keys, kind="stable")
    at = np.empty(len(keys), dtype=np.int64)
    at[order] = np.searchsorted(sorted_keys, keys[order])
    return at


def _lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Index of each key in sorted_keys, -1 where absent."""
    if not len(sorted_keys):
        return np.full(len(keys), -1, dtype=np.int64)
    at = _search(sorted_keys, keys)
    found = (at < len(sorted_keys)) & (sorted_keys[np.minimum(at, len(sorted_keys) - 1)] == keys)
    return np.where(found, at, -1)


def apply_requests(book, requests, table: str = "requests") -> tuple[Book, pl.DataFrame]:
    """Apply a request batch (model §7) to a copy of `book` (a Book or a book folder; the
    requests a table or a Parquet path); returns (new book, outcomes).

    A malformed table (missing columns, wrong types, duplicate request ids) raises BookError
    and applies nothing. Malformed requests are rejected with a reason, not raised.
    Outcomes, in request order: request_id, accepted, reason (null when accepted), asset,
    amount (the money moved: the margin added, removed, pulled in by a leverage cut, or a
    flat row's margin returned on a mode switch; 0 when nothing moved).
    """
    book = as_book(book)
    if is_path(requests):
        requests, table = read_table(requests), str(requests)
    book.check_marks(book.mark)
    df = as_frame(requests, table)
    n = df.height
    request_id = int_col(df, table, "request_id")
    ids = np.sort(request_id)
    if n and np.any(ids[1:] == ids[:-1]):
        dup = np.flatnonzero(np.isin(request_id, ids[1:][ids[1:] == ids[:-1]]))
        raise BookError(table, "request_id", "request_id listed twice", dup)
    account_id = int_col(df, table, "account_id")
    op_text = str_col(df, table, "op").cast(pl.String).to_numpy()
    value = _values(df, table, needed=op_text != OPS[MODE])
    symbol_text = str_col(df, table, "symbol", "").cast(pl.String).to_numpy() if "symbol" in df.columns \
        else np.full(n, "", dtype=object)
    side_text = str_col(df, table, "position_side", "both").cast(pl.String).to_numpy()
    mode_text = str_col(df, table, "mode", "").cast(pl.String).to_numpy() if "mode" in df.columns \
        else np.full(n, "", dtype=object)
    asset_text = str_col(df, table, "asset", "USDT").cast(pl.String).to_numpy()

    inst, wal, pos = book.instruments, book.wallets, book.positions
    op = lookup(op_text, OPS)
    reason = np.where(op < 0, UNKNOWN_OP, OK).astype(np.int8)
    transfer = (op == TRANSFER_IN) | (op == TRANSFER_OUT)
    sym = lookup(symbol_text, inst.symbol)
    reason[(reason == OK) & ~transfer & (sym < 0)] = UNKNOWN_SYMBOL
    asset = np.where(transfer, lookup(asset_text, book.assets),
                     np.where(sym < 0, -1, inst.settle_asset[np.maximum(sym, 0)]))
    w = wallet_of(account_id, asset.astype(np.int32), book.wallets)
    reason[(reason == OK) & ((w < 0) | (asset < 0))] = UNKNOWN_ACCOUNT
    side = lookup(side_text, SIDES)
    mode = lookup(mode_text, MODES)
    scale = book.asset_scale[np.maximum(asset, 0)]
    with np.errstate(invalid="ignore", over="ignore"):
        money_op = (op == ADD) | (op == REMOVE) | transfer
        in_range = np.isfinite(value) & (value > 0) & (value * 10.0 ** scale < 2.0**62)
        units = np.zeros(n, dtype=np.int64)
        exact = np.flatnonzero(money_op & in_range)  # the column itself: decimals and integers exactly
        if len(exact):
            units[exact] = to_units(df["value"].gather(exact), scale[exact], table)
        bad_value = np.where(op == MODE, mode < 0, ~in_range)
        bad_value |= (op == LEVERAGE) & ~(value >= 1)
        bad_value |= money_op & (units <= 0)  # below one money unit
    reason[(reason == OK) & bad_value] = BAD_VALUE

    # position rows: (wallet, symbol, side) for position ops; the (wallet, symbol) range for modes
    n_sym = len(inst)
    w0, s0 = np.maximum(w, 0), np.maximum(sym, 0)
    pos_keys = position_key(pos.wallet, pos.symbol, pos.side, n_sym)
    first, end = group_range(w0, s0, n_sym)
    row = np.where(op == MODE, _search(pos_keys, first),
                   _lookup(pos_keys, position_key(w0, s0, np.maximum(side, 0), n_sym)))
    row_end = np.where(op == MODE, _search(pos_keys, end), row + 1)
    no_row = np.where(op == MODE, row_end <= row, (row < 0) | (side < 0))
    reason[(reason == OK) & ~transfer & no_row] = UNKNOWN_POSITION
    order_keys = np.sort(group_key(book.orders.wallet, book.orders.symbol, n_sym))
    has_orders = _lookup(order_keys, group_key(w0, s0, n_sym)) >= 0

    out = ScanArrays.empty(len(pos), len(wal))
    state = np.zeros((len(wal), WALLET_STATE))  # the kernel's running Σ cross upnl, im, mm per wallet
    scan_into(book, book.mark, out, with_liq_price=False, sums=state)
    fig = out.position_figures()
    fig = fig._replace(im=fig.im.copy(), mm=fig.mm.copy())
    balance, iso_margin = wal.balance.copy(), pos.isolated_margin.copy()
    leverage, isolated = pos.leverage.copy(), pos.isolated.copy()
    by_wallet = np.argsort(np.where(w < 0, -1, w), kind="stable")
    wallet_sorted = np.where(w < 0, -1, w)[by_wallet]
    group_start = np.flatnonzero(np.r_[True, wallet_sorted[1:] != wallet_sorted[:-1], True]) if n else np.zeros(1, np.int64)
    accepted = np.zeros(n, dtype=bool)
    moved = np.zeros(n, dtype=np.int64)
    req = Requests(group_start.astype(np.int64), by_wallet.astype(np.int64), op.astype(np.int8),
                   np.maximum(row, 0).astype(np.int64), row_end.astype(np.int64), value, units, mode == 1,
                   w0.astype(np.int64), has_orders, reason, accepted, moved)
    apply_kernel(req, WalletColumns.of(book)._replace(balance=balance),
                 PositionColumns.of(pos)._replace(leverage=leverage, isolated=isolated, isolated_margin=iso_margin),
                 SymbolTable.of(book), fig, state)

    # entry prices are untouched, so only 1/leverage is re-derived; nothing is shared with `book`
    # the kernel decided on copies; the new book takes the money it moved through the book's API
    new = replace(book, wallets=replace(wal, balance=wal.balance.copy(), order_margin=wal.order_margin.copy()),
                  positions=replace(pos, leverage=leverage, isolated=isolated, isolated_margin=pos.isolated_margin.copy(),
                                    entry_unit=pos.entry_unit.copy(), inv_leverage=1.0 / leverage),
                  orders=book.orders.take(slice(None)))
    moved_w, moved_p = np.flatnonzero(balance != wal.balance), np.flatnonzero(iso_margin != pos.isolated_margin)
    new.apply_moves(balance=(moved_w, balance[moved_w] - wal.balance[moved_w]),
                    isolated_margin=(moved_p, iso_margin[moved_p] - pos.isolated_margin[moved_p]))
    asset_names = np.array(book.assets + [None], dtype=object)
    outcomes = pl.DataFrame({
        "request_id": request_id, "accepted": accepted,
        "reason": pl.Series(np.array(REASONS, dtype=object)[reason].tolist(), dtype=pl.String).replace("", None),
        "asset": asset_names[np.where(asset < 0, -1, asset)].tolist(),
        "amount": pl.from_arrow(units_to_decimal(moved, book.output_scale, scale)),
    }, schema_overrides={"asset": pl.String})
    return new, outcomes
