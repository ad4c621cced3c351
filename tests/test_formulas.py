"""The model's formulas, each written once (riskcore.kernels, keys, tables.lookup,
Book.output_scale), tested alone against their plain definitions in docs/model.md, and the
trigger at its boundary through the scan and margin operations alike."""

from decimal import Decimal

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

import riskcore as rc
from riskcore import keys
from riskcore.errors import BookError
from riskcore.kernels import (ACCOUNT_FIGURES, AccountFigures, account_figures, account_views, available_balance,
                              cross_liquidates, isolated_liquidates, liquidates, maintenance_margin, margin_balance,
                              risk_ratio, transferable)
from riskcore.ops import apply_requests, removal_unsafe
from riskcore.tables import codes, lookup

money = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)
small = st.integers(-2**20, 2**20).map(lambda k: k / 64)  # exact in binary: sums carry no rounding


# -- the trigger (model §5) ----------------------------------------------------------------------

def test_trigger_exactly_at_the_boundary_liquidates():
    # model §5: liquidate when cushion − fee ≤ mm (equality included)
    assert liquidates(10.5, 0.5, 10.0)
    assert not liquidates(10.5 + 2**-40, 0.5, 10.0)
    assert liquidates(10.5 - 2**-40, 0.5, 10.0)


def test_isolated_trigger_needs_an_open_position():
    assert isolated_liquidates(1.0, 10.0, 0.0, 10.0)
    assert isolated_liquidates(-1.0, 10.0, 0.0, 10.0)
    assert not isolated_liquidates(0.0, -100.0, 0.0, 10.0)  # flat never liquidates


def test_cross_trigger_needs_an_open_cross_position():
    assert cross_liquidates(True, 10.0, 0.0, 10.0)
    assert not cross_liquidates(False, -100.0, 0.0, 10.0)  # even with a negative balance


@given(small, small, small)
def test_trigger_is_the_plain_inequality(cushion, fee, mm):
    assert liquidates(cushion, fee, mm) == (cushion - fee <= mm)
    assert isolated_liquidates(1.0, cushion, fee, mm) == (cushion - fee <= mm)
    assert cross_liquidates(True, cushion, fee, mm) == (cushion - fee <= mm)


@given(small, small.filter(lambda x: x >= 0), small.filter(lambda x: x >= 0))
def test_liquidation_iff_risk_ratio_at_least_one(cushion, mm, fee):
    ratio = risk_ratio(True, cushion, mm, fee)
    if cushion > 0:  # model §5.2: liquidation ⇔ risk_ratio ≥ 1 (for equity > 0)
        assert (ratio >= 1.0) == liquidates(cushion, fee, mm)
    else:
        assert ratio == np.inf


def test_risk_ratio_definition():
    assert risk_ratio(False, 5.0, 1.0, 1.0) == 0.0  # flat / no open cross position
    assert risk_ratio(True, 0.0, 1.0, 1.0) == np.inf
    assert risk_ratio(True, -3.0, 1.0, 1.0) == np.inf
    assert risk_ratio(True, 8.0, 1.5, 0.5) == 0.25


# -- wallet figures (model §5.2) -----------------------------------------------------------------

@given(money, money, money, st.floats(0, 1e9))
def test_available_and_transferable_are_the_plain_definitions(balance, upnl, margin, order_margin):
    equity = balance + upnl
    assert available_balance(equity, margin, order_margin) == max(0.0, equity - margin - order_margin)
    assert transferable(balance, equity, margin, order_margin) == max(0.0, min(balance, equity - margin - order_margin))


def test_account_figures_use_the_shared_pieces():
    equity, ratio, available, transfer, total, liquidate = account_figures(
        100.0, -20.0, 30.0, 50.0, 10.0, 7.0, True, 5.0)
    assert equity == 80.0
    assert ratio == (30.0 + 10.0) / 80.0
    assert available == 80.0 - 50.0 - 5.0
    assert transfer == min(100.0, 80.0 - 30.0 - 5.0)
    assert total == 87.0
    assert not liquidate and cross_liquidates(True, 40.0, 10.0, 30.0)


def test_packed_account_columns_follow_account_figures():
    packed = np.arange(3 * len(ACCOUNT_FIGURES), dtype=float).reshape(3, -1)
    views = account_views(packed, np.zeros(3, bool))
    assert AccountFigures._fields[:-1] == ACCOUNT_FIGURES
    for k, name in enumerate(ACCOUNT_FIGURES):
        assert np.shares_memory(getattr(views, name), packed)
        np.testing.assert_array_equal(getattr(views, name), packed[:, k])


# -- maintenance margin and margin balance (model §4.2, §4.3, §5.1) ------------------------------

def test_tiered_maintenance_margin_is_notional_times_rate_minus_cum():
    mmr, cum = np.array([0.01, 0.02]), np.array([0.0, 500.0])
    assert maintenance_margin(100_000.0, 1, 1 / 20, np.nan, mmr, cum) == 100_000.0 * 0.02 - 500.0


@given(st.floats(0, 1e9), st.floats(1, 125), st.floats(0.01, 1))
def test_fraction_maintenance_margin_is_a_fraction_of_initial_margin(notional, leverage, c):
    mm = maintenance_margin(notional, 0, 1 / leverage, c, np.array([0.5]), np.array([123.0]))
    assert mm == pytest.approx(c * notional / leverage, rel=1e-14, abs=1e-300)


def test_margin_balance_is_isolated_margin_plus_upnl():
    assert margin_balance(2_500_000_000, 1e-8, -5.0) == 20.0


def test_removal_is_unsafe_at_the_boundary_and_on_nan():
    assert removal_unsafe(1.0, 25.0, 0.0, 25.0)
    assert not removal_unsafe(1.0, 25.000001, 0.0, 25.0)
    assert not removal_unsafe(0.0, -1.0, 0.0, 25.0)  # flat: nothing to protect
    assert removal_unsafe(1.0, np.nan, 0.0, 25.0) and removal_unsafe(1.0, 30.0, 0.0, np.nan)


def _boundary_book(isolated_margin):
    """One isolated long: notional 100, mm = 25 (mmr 0.25), no fee, upnl 0."""
    return rc.Book.from_tables(
        instruments=pl.DataFrame({"symbol": ["X"], "contract_type": ["linear"], "face_value": [1.0],
                                  "taker_fee_rate": [0.0]}),
        risk_tiers=pl.DataFrame({"symbol": ["X"], "notional_floor": [0.0], "mmr": [0.25], "max_leverage": [2.0]}),
        accounts=pl.DataFrame({"account_id": [1], "balance": [1000.0]}),
        positions=pl.DataFrame({"account_id": [1], "symbol": ["X"], "qty": [1.0], "entry_price": [100.0],
                                "margin_mode": ["isolated"], "leverage": [2.0], "isolated_margin": [isolated_margin]}),
        marks=pl.DataFrame({"symbol": ["X"], "mark_price": [100.0]}))


def test_scan_and_remove_margin_share_the_boundary():
    assert rc.scan(_boundary_book(25.0)).positions["liquidate"][0]  # margin_balance − fee = mm
    assert not rc.scan(_boundary_book(25.00000001)).positions["liquidate"][0]
    reqs = pl.DataFrame({"request_id": [0, 1], "account_id": [1, 1], "symbol": ["X", "X"],
                         "op": ["remove_margin", "remove_margin"], "value": [5.0, 4.99999999]})
    _, out = apply_requests(_boundary_book(30.0), reqs[0])
    assert out["reason"].to_list() == ["would_liquidate"]  # it would leave margin_balance − fee = mm
    _, out = apply_requests(_boundary_book(30.0), reqs[1])
    assert out["accepted"].to_list() == [True]


# -- keys, lookups, money scale --------------------------------------------------------------------

@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 499), st.integers(0, 2)), max_size=50))
def test_position_keys_sort_as_wallet_symbol_side_and_decode(rows):
    n_sym = 500
    w, s, d = (np.array(c, dtype=np.int64) for c in zip(*rows)) if rows else (np.zeros(0, np.int64),) * 3
    key = keys.position_key(w.astype(np.int32), s.astype(np.int32), d.astype(np.int8), n_sym)
    assert key.dtype == np.int64
    np.testing.assert_array_equal(np.argsort(key, kind="stable"), np.lexsort((d, s, w)))
    for got, want in zip(keys.decode_position(key, n_sym), (w, s, d)):
        np.testing.assert_array_equal(got, want)
    lo, hi = keys.group_range(w, s, n_sym)
    assert ((lo <= key) & (key < hi)).all()
    np.testing.assert_array_equal(keys.group_of(key), keys.group_key(w, s, n_sym))
    group, iso = keys.decode_mode_key(keys.mode_key(keys.group_key(w, s, n_sym), d == 1))
    np.testing.assert_array_equal(group, keys.group_key(w, s, n_sym))
    np.testing.assert_array_equal(iso, d == 1)


def test_lookup_is_lenient_and_codes_strict():
    values = pl.Series("symbol", ["B", "nope", None, "A", "B"], dtype=pl.String)
    assert lookup(values, ["A", "B"]).tolist() == [1, -1, -1, 0, 1]
    assert lookup(np.array(["A", "C"], dtype=object), ["A", "B"]).tolist() == [0, -1]
    assert lookup(pl.Series("s", ["A"]).cast(pl.Categorical), ["A"]).tolist() == [0]
    assert lookup(pl.Series("s", [], dtype=pl.String), ["A"]).tolist() == []
    assert codes(pl.Series("s", ["B", "A"]), ["A", "B"], "t", "unknown").tolist() == [1, 0]
    with pytest.raises(BookError, match="unknown: nope"):
        codes(values.fill_null("A"), ["A", "B"], "t", "unknown")


def test_output_scale_is_the_largest_asset_scale():
    book = _boundary_book(30.0)
    assert book.output_scale == 8
    tables = dict(instruments=pl.DataFrame({"symbol": ["X", "Y"], "contract_type": ["linear", "inverse"],
                                            "settle_asset": ["USDT", "BTC"], "face_value": [1.0, 1.0],
                                            "taker_fee_rate": [0.0, 0.0]}),
                  risk_tiers=pl.DataFrame({"symbol": ["X", "Y"], "notional_floor": [0.0, 0.0], "mmr": [0.1, 0.1],
                                           "max_leverage": [5.0, 5.0]}),
                  accounts=pl.DataFrame({"account_id": [1], "balance": [1.0]}),
                  positions=pl.DataFrame({"account_id": [1], "symbol": ["X"], "qty": [0.0], "entry_price": [1.0],
                                          "margin_mode": ["cross"], "leverage": [1.0]}))
    assert rc.Book.from_tables(**tables, money_scale={"USDT": 6, "BTC": 10}).output_scale == 10
    assert rc.Book.from_tables(**tables, money_scale={"USDT": 2, "BTC": 4}).output_scale == 4


def _isolated_book(entry, mark, mmr, isolated_margin):
    """One isolated long 1 @ entry, no fee, one tier at mmr, marked at mark."""
    return rc.Book.from_tables(
        instruments=pl.DataFrame({"symbol": ["X"], "contract_type": ["linear"], "face_value": [1.0],
                                  "taker_fee_rate": [0.0]}),
        risk_tiers=pl.DataFrame({"symbol": ["X"], "notional_floor": [0.0], "mmr": [mmr], "max_leverage": [1.0]}),
        accounts=pl.DataFrame({"account_id": [1], "balance": [1000.0]}),
        positions=pl.DataFrame({"account_id": [1], "symbol": ["X"], "qty": [1.0], "entry_price": [entry],
                                "margin_mode": ["isolated"], "leverage": [1.0], "isolated_margin": [isolated_margin]}),
        marks=pl.DataFrame({"symbol": ["X"], "mark_price": [mark]}))


def test_issue_example_at_the_boundary_liquidates():
    # issue 13's example: long 1 @ 100, margin 24, mmr 5 %, mark 80: margin balance 4 = mm 4
    assert rc.scan(_isolated_book(100.0, 80.0, 0.05, 24.0)).positions["liquidate"][0]


@pytest.mark.xfail(strict=True, reason="issue 13: decisions are taken in binary floats; "
                   "no exact decimal fallback at the boundary yet")
@pytest.mark.parametrize("entry, mark, mmr, margin", [(0.3, 0.2, 0.1, 0.12), (0.7, 0.2, 0.3, 0.56)])
def test_decimal_boundary_liquidates(entry, mark, mmr, margin):
    # in decimal: margin + (mark − entry) = mark·mmr exactly, so the position liquidates
    assert Decimal(str(margin)) + Decimal(str(mark)) - Decimal(str(entry)) == Decimal(str(mark)) * Decimal(str(mmr))
    assert rc.scan(_isolated_book(entry, mark, mmr, margin)).positions["liquidate"][0]
