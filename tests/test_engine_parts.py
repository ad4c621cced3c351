"""The tick engine's parts alone (riskcore/engine/): the event log's growable columns, the
liquidation plans (money moves that conserve money to the unit and change nothing), the
exact ADL credit, the state's helpers, the tick checks."""

from copy import deepcopy
from decimal import Decimal
from fractions import Fraction

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

import riskcore as rc
from riskcore.book import order_margin
from riskcore.engine import ADL_CLOSE, EVENT_KINDS, Engine, EventLog, TickError
from riskcore.engine import liquidation
from riskcore.engine.events import ACCOUNT_LIQUIDATABLE, CLOSE_KINDS, LIQUIDATION_CLOSE, POSITION_LIQUIDATABLE
from riskcore.engine.state import ranges
from riskcore.engine.ticks import check_tick
from riskcore.gen import generate
from riskcore.money import INT64_MAX, INT64_MIN, int64_parts, realized_units, spread_units


def exact(x) -> Fraction:
    return Fraction(Decimal(repr(float(x))))


# -- events -------------------------------------------------------------------------------

def test_event_log_grows_past_its_capacity_and_keeps_every_event():
    log = EventLog(capacity=2)
    expected = []
    for k in range(5):
        log.append(k, LIQUIDATION_CLOSE, k % 3, row=k, qty=-0.5 * k, price=100.0 + k, realized=-(10**15) * k,
                   fund=k)
        expected.append((k, LIQUIDATION_CLOSE, k % 3, k, -0.5 * k, -(10**15) * k, k))
    wallets = np.arange(7) % 3
    log.append_block(9, ACCOUNT_LIQUIDATABLE, wallets, equity=np.arange(7.0), mm=1.0)
    expected += [(9, ACCOUNT_LIQUIDATABLE, int(w), -1, np.nan, 0, 0) for w in wallets]
    assert len(log) == 12 and log.capacity == 16  # 2 → 4 → 8 → 16, doubling
    got = list(zip(log.column("ts"), log.column("kind"), log.column("wallet"), log.column("row"), log.column("qty"),
                   log.column("realized"), log.column("fund")))
    for g, e in zip(got, expected):
        assert g[:4] == e[:4] and g[5:] == e[5:] and (g[4] == e[4] or (np.isnan(g[4]) and np.isnan(e[4])))
    assert log.column("equity")[5:].tolist() == list(np.arange(7.0)) and np.isnan(log.column("equity")[:5]).all()
    assert (log.column("mm")[5:] == 1.0).all() and np.isnan(log.column("price")[5:]).all()


def test_event_frame_columns_dtypes_and_money():
    book = rc.Book.from_tables(**generate(20, 50, 3, seed=2))
    log = EventLog(capacity=1)
    assert log.frame(book).height == 0
    log.append(None, POSITION_LIQUIDATABLE, int(book.positions.wallet[3]), row=3, qty=1.5, price=2.0,
               equity=-1.0, mm=0.5, risk_ratio=np.inf)
    log.append(np.int64(7), LIQUIDATION_CLOSE, int(book.positions.wallet[3]), row=3, realized=INT64_MIN + 1,
               fund=INT64_MAX)
    log.append_block(np.int64(8), ACCOUNT_LIQUIDATABLE, np.array([0, 1]), equity=np.array([1.0, 2.0]))
    ev = log.frame(book)
    assert ev.columns == ["seq", "ts", "kind", "account_id", "asset", "symbol", "position_side", "qty", "price",
                          "realized_pnl", "insurance_fund_delta", "equity", "mm", "risk_ratio"]
    assert ev["seq"].to_list() == [0, 1, 2, 3] and log.frame(book, since_seq=2)["seq"].to_list() == [2, 3]
    assert ev["ts"].to_list() == [None, 7, 8, 8]
    assert ev["kind"].cast(pl.String).to_list() == [EVENT_KINDS[k] for k in (1, 2, 0, 0)]
    scale = int(book.asset_scale[book.wallets.asset[book.positions.wallet[3]]])
    assert ev["realized_pnl"][1] == Decimal(INT64_MIN + 1).scaleb(-scale)
    assert ev["insurance_fund_delta"][1] == Decimal(INT64_MAX).scaleb(-scale)
    assert ev["symbol"][2] is None and ev["symbol"][0] == book.instruments.symbol[book.positions.symbol[3]]


# -- liquidation plans --------------------------------------------------------------------

def crashed(seed, fund, factor):
    """An engine (not liquidating) over a generated book after a crash of every mark."""
    book = rc.Book.from_tables(**generate(300, 2000, 10, seed=seed))
    table = pl.DataFrame({"asset": book.assets, "balance": [fund] * len(book.assets)})
    e = Engine(book, insurance_fund=table)
    e.on_symbol_marks(np.arange(len(book.instruments)), e.mark * factor, 1)
    return e


@pytest.mark.parametrize("seed,fund,factor", [(1, 1e6, 0.9), (2, 0.0, 0.8), (3, 0.0, 1.25), (4, 5.0, 0.7)])
def test_close_plans_conserve_money_to_the_unit_and_change_nothing(seed, fund, factor):
    e = crashed(seed, fund, factor)
    book = e.book
    before = deepcopy((book.wallets.balance, book.positions.isolated_margin, book.positions.qty,
                       book.wallets.order_margin, e.fund, len(book.orders)))
    closes = liquidation.closes_due(book, e.out, np.arange(len(book.wallets)))
    assert len(closes.wallet)
    queues = liquidation.AdlQueues(book, e.mark, e.state)
    kinds = set()
    for k, (w, isolated) in enumerate(zip(closes.wallet, closes.isolated)):
        rows = closes.rows[closes.start[k]:closes.start[k + 1]]
        moves = liquidation.plan_close(book, e.mark, e.fund, rows, int(w), bool(isolated), queues, e.state)
        assert moves.money_moved() == moves.realized()  # model §8.6, per close, exact
        assert all(e[0] in CLOSE_KINDS for e in moves.events)
        assert moves.balance[1].dtype == np.int64 and moves.isolated_margin[1].dtype == np.int64
        if isolated:
            assert moves.isolated_margin[0][0] == rows[0] and moves.isolated_margin[1][0] == -before[1][rows[0]]
        # the closed rows end at exactly 0
        change = dict(zip(moves.qty[0][:len(rows)].tolist(), moves.qty[1][:len(rows)].tolist()))
        assert all(book.positions.qty[i] + change[i] == 0.0 for i in rows)
        kinds |= {e[0] for e in moves.events}
    after = (book.wallets.balance, book.positions.isolated_margin, book.positions.qty, book.wallets.order_margin,
             e.fund, len(book.orders))
    for x, y in zip(before, after):
        np.testing.assert_array_equal(x, y)
    if fund == 0.0:
        assert ADL_CLOSE in kinds


def test_adl_credit_is_the_exact_realized_pnl_at_the_bankruptcy_price():
    """Every adl_close of a replay realizes floor(closed·f·(P_b − E)) (inverse
    floor(closed·f·(1/E − 1/P_b))) of the decimals the floats print as, to the unit."""
    tables = generate(300, 2000, 10, seed=3)
    book = rc.Book.from_tables(**tables)
    e = Engine(book, liquidate=True)
    entry, qty_at_load = book.positions.entry_price.copy(), book.positions.qty.copy()
    e.on_symbol_marks(np.arange(len(book.instruments)), e.mark * 0.8, 1)
    log = e._events
    adl = np.flatnonzero(log.column("kind") == ADL_CLOSE)
    assert len(adl) > 50
    inst = book.instruments
    for k in adl:
        c = int(log.column("row")[k])
        s = book.positions.symbol[c]
        closed, price = -log.column("qty")[k], log.column("price")[k]
        assert np.sign(closed) == np.sign(qty_at_load[c])
        f = exact(inst.face_value[s])
        if inst.inverse[s]:
            value = exact(closed) * f * (1 / exact(entry[c]) - (0 if np.isinf(price) else 1 / exact(price)))
        else:
            value = exact(closed) * f * (exact(price) - exact(entry[c]))
        scale = int(book.asset_scale[inst.settle_asset[s]])
        assert log.column("realized")[k] == (value * 10**scale).__floor__()


def test_realized_units_of_an_inverse_close_at_an_infinite_price():
    # q·f·(1/E − 1/∞) = q·f/E: 3 × 100 / 7 = 42.857142857…, floored at 8 places
    got = realized_units(np.array([3.0, -3.0]), np.array([7.0, 7.0]), np.array([100.0, 100.0]),
                         np.array([True, True]), np.array([np.inf, np.inf]), np.array([8, 8]))
    assert got.tolist() == [4285714285, -4285714286]


@given(st.integers(-(2**70), 2**70), st.lists(st.integers(0, 10**6), min_size=1, max_size=6))
def test_spread_units_and_int64_parts_are_exact(total, weights):
    if abs(total) < 2**62:
        shares = spread_units(total, np.array(weights, dtype=np.int64))
        assert sum(int(x) for x in shares) == total
    parts = int64_parts(total)
    assert sum(parts) == total and all(INT64_MIN <= p <= INT64_MAX for p in parts)


def test_overflowing_plan_is_refused_before_anything_moves():
    """A wallet at the top of int64: the isolated margin left would not fit; plan_close
    refuses, naming the engine, the column and the rows, and the book is untouched."""
    def money(v):
        return pl.Series([v], dtype=pl.Decimal(38, 8))
    book = rc.Book.from_tables(
        instruments=pl.DataFrame({"symbol": ["AUSDT"], "contract_type": ["linear"], "face_value": [1.0],
                                  "taker_fee_rate": [0.0], "liquidation_fee_rate": [0.0], "mm_im_fraction": [0.5]}),
        risk_tiers=pl.DataFrame(schema={"symbol": pl.String, "notional_floor": pl.Float64, "mmr": pl.Float64,
                                        "max_leverage": pl.Float64}),
        accounts=pl.DataFrame({"account_id": [1], "asset": ["USDT"]}).with_columns(
            money(Decimal(INT64_MAX).scaleb(-8)).alias("balance")),
        positions=pl.DataFrame({"account_id": [1], "symbol": ["AUSDT"], "position_side": ["both"], "qty": [0.1],
                                "entry_price": [50000.0], "margin_mode": ["isolated"], "leverage": [50.0]}).with_columns(
            money(Decimal(100)).alias("isolated_margin")),
        marks=pl.DataFrame({"symbol": ["AUSDT"], "mark_price": [49490.0]}))
    e = Engine(book)
    closes = liquidation.closes_due(e.book, e.out, np.arange(len(e.book.wallets)))
    assert closes.start.tolist() == [0, 1] and closes.isolated.tolist() == [True]
    queues = liquidation.AdlQueues(e.book, e.mark, e.state)
    with pytest.raises(rc.BookError, match="engine: column 'balance'"):
        liquidation.plan_close(e.book, e.mark, e.fund, closes.rows, int(closes.wallet[0]), True, queues, e.state)
    assert e.book.positions.qty.tolist() == [0.1] and e.book.positions.isolated_margin.tolist() == [100 * 10**8]
    assert e.book.wallets.balance.tolist() == [INT64_MAX]


# -- orders, state, ticks -----------------------------------------------------------------

def test_forced_closes_cancel_orders_in_the_book_itself():
    tables = generate(400, 4000, 10, seed=11)
    book = rc.Book.from_tables(**tables)
    e = Engine(book, liquidate=True, insurance_fund=pl.DataFrame({"asset": book.assets,
                                                                  "balance": [1e6] * len(book.assets)}))
    e.on_symbol_marks(np.arange(len(book.instruments)), book.mark * 0.9, 1)
    assert e.order_cancelled.any() and len(e.book.orders) == int((~e.order_cancelled).sum())
    assert e.current_book().orders is e.book.orders
    # the orders left are the loaded ones not cancelled, in order
    np.testing.assert_array_equal(e.book.orders.price, book.orders.price[~e.order_cancelled])
    np.testing.assert_allclose(e.book.wallets.order_margin,
                               order_margin(e.book.orders, e.book.instruments, len(book.wallets)), rtol=1e-12)


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 5)), max_size=8))
def test_ranges_concatenate_every_half_open_range(spans):
    lo = np.array([a for a, _ in spans], dtype=np.int64)
    hi = lo + np.array([n for _, n in spans], dtype=np.int64)
    expected = [i for a, b in zip(lo, hi) for i in range(a, b)]
    assert ranges(lo, hi).tolist() == expected


def test_tick_checks_alone():
    sym, price = check_tick([2, 0], [1.5, 3], ts=5, last_ts=4)
    assert sym.dtype == np.int64 and price.dtype == np.float64
    for args, words in ((([0], [0.0], 5, 4), "finite and positive"), (([0, 0], [1.0, 1.0], 5, 4), "twice"),
                        (([0], [1.0], 3, 4), "time goes backwards"), (([0, 1], [1.0], 5, 4), "one price")):
        with pytest.raises(TickError, match=words):
            check_tick(*args)


@pytest.mark.parametrize("seed,factor", [(1, 1.0), (6, 0.93)])
def test_adl_ranks_and_quantiles_follow_the_rank_formula(seed, factor):
    """adl_rank per position from plain per-row arithmetic (model §8.5), and adl_quantile
    4 for the first fifth of its symbol and side's queue (best rank first, ties in book
    order), down to 0 for the last fifth; flat positions have neither."""
    book = rc.Book.from_tables(**generate(200, 1500, 8, seed=seed))
    e = Engine(book)
    e.on_symbol_marks(np.arange(len(book.instruments)), e.mark * factor, 1)
    got = e.adl_ranks()
    pos, inst = book.positions, book.instruments
    figures = e.position_figures()
    equity = e.out.accounts["equity"]
    cross_notional = np.bincount(pos.wallet, weights=np.where(pos.isolated, 0.0, figures["notional"]),
                                 minlength=len(book.wallets))
    expected = []
    for i in range(len(pos.qty)):
        q, s, w = pos.qty[i], pos.symbol[i], pos.wallet[i]
        if q == 0:
            expected.append(None)
            continue
        upnl, notional = figures["upnl"][i], figures["notional"][i]
        pnl = upnl / (abs(q) * pos.entry_unit[i])
        margin = (pos.isolated_margin[i] * book.symbol_unit[s] + upnl if pos.isolated[i]
                  else equity[w] * notional / cross_notional[w])
        effective = notional / margin if margin > 0 else np.inf
        expected.append(pnl * effective if pnl > 0 else pnl / effective)
    np.testing.assert_allclose(got["adl_rank"].fill_null(np.nan).to_numpy(),
                               np.array(expected, dtype=float), rtol=1e-9, equal_nan=True)
    assert got["adl_quantile"].is_null().to_list() == (pos.qty == 0).tolist()
    frame = got.with_row_index("row").filter(pl.col("adl_quantile").is_not_null()).with_columns(
        long=pl.Series((pos.qty > 0)[pos.qty != 0]))
    for (_, _), side in frame.group_by("symbol", "long"):
        side = side.sort(pl.col("adl_rank").fill_nan(-np.inf), "row", descending=[True, False])
        n = side.height
        assert side["adl_quantile"].to_list() == [4 - 5 * p // n for p in range(n)]
