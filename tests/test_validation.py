"""Every book rule of docs/model.md §2: a BookError naming the table, the column and the rows."""

import math

import numpy as np
from hypothesis import given, settings, strategies as st

import polars as pl
import pytest

import riskcore as rc
from riskcore import BookError

from books import good, with_value


def expect(tables, table, column, rows, words):
    with pytest.raises(BookError) as e:
        rc.Book.from_tables(**tables)
    err = e.value
    assert err.table == table and err.column == column, str(err)
    assert err.rows is not None and list(err.rows) == rows, str(err)
    assert words in str(err), str(err)
    return err


def test_good_book_loads_and_scans():
    r = rc.scan(rc.Book.from_tables(**good()))
    assert r.positions.height == 4 and r.accounts.height == 3


@pytest.mark.parametrize("column,value", [("qty", math.nan), ("qty", math.inf), ("entry_price", -math.inf),
                                          ("leverage", math.nan), ("isolated_margin", math.nan)])
def test_nan_and_inf_rejected(column, value):
    expect(with_value(good(), "positions", column, 2, value), "positions", column, [2], "NaN or infinite")


@pytest.mark.parametrize("column,value,words", [
    ("entry_price", 0.0, "positive"), ("leverage", 0.5, ">= 1"),
    ("position_side", "sideways", "position_side must be"), ("margin_mode", "portfolio", "margin_mode must be"),
])
def test_bad_position_values(column, value, words):
    expect(with_value(good(), "positions", column, 1, value), "positions", column, [1], words)


def test_long_with_negative_qty():
    expect(with_value(good(), "positions", "qty", 2, -1.0), "positions", "qty", [2], "long position")


def test_cross_position_with_isolated_margin():
    expect(with_value(good(), "positions", "isolated_margin", 0, 5.0), "positions", "isolated_margin", [0],
           "cross position cannot hold")


def test_unknown_symbol():
    expect(with_value(good(), "positions", "symbol", 3, "DOGEUSDT"), "positions", "symbol", [3], "DOGEUSDT")


def test_unknown_account():
    expect(with_value(good(), "positions", "account_id", 0, 99), "positions", "account_id", [0], "no accounts row")


def test_missing_wallet_for_settle_asset():
    t = good()
    t["accounts"] = t["accounts"].filter(pl.col("asset") != "BTC")
    expect(t, "positions", "account_id", [1], "settle asset")


def test_duplicate_position_key():
    t = good()
    t["positions"] = pl.concat([t["positions"], t["positions"].slice(0, 1)])
    expect(t, "positions", "position_side", [0, 4], "listed twice")


def test_symbol_held_cross_and_isolated():
    expect(with_value(good(), "positions", "margin_mode", 3, "isolated"), "positions", "margin_mode", [2, 3],
           "both cross and isolated")


def test_both_mixed_with_hedge_legs():
    expect(with_value(good(), "positions", "position_side", 2, "both"), "positions", "position_side", [2, 3],
           "mixes 'both'")


def test_duplicate_account_wallet():
    t = good()
    t["accounts"] = pl.concat([t["accounts"], t["accounts"].slice(2, 1)])
    expect(t, "accounts", "account_id", [2, 3], "listed twice")


def test_nan_balance():
    expect(with_value(good(), "accounts", "balance", 1, math.nan), "accounts", "balance", [1], "NaN or infinite")


def test_missing_tiers():
    t = good()
    t["risk_tiers"] = t["risk_tiers"].filter(pl.col("symbol") != "ETHUSDT")
    expect(t, "instruments", "symbol", [2], "no risk tiers")


def test_first_tier_must_start_at_zero():
    expect(with_value(good(), "risk_tiers", "notional_floor", 2, 10.0), "risk_tiers", "notional_floor", [2],
           "start at 0")


def test_mmr_must_not_fall():
    expect(with_value(good(), "risk_tiers", "mmr", 1, 0.001), "risk_tiers", "mmr", [1], "decreases")


def test_duplicate_tier_floor():
    t = good()
    t["risk_tiers"] = pl.concat([t["risk_tiers"], t["risk_tiers"].slice(1, 1)])
    expect(t, "risk_tiers", "notional_floor", [1, 4], "share a floor")


def test_inverse_needs_settle_asset():
    expect(with_value(good(), "instruments", "settle_asset", 1, None), "instruments", "settle_asset", [1],
           "inverse contract")


def test_bad_face_value_and_contract_type():
    expect(with_value(good(), "instruments", "face_value", 0, 0.0), "instruments", "face_value", [0], "positive")
    expect(with_value(good(), "instruments", "contract_type", 2, "option"), "instruments", "contract_type", [2],
           "linear or inverse")


def test_order_mode_conflicts_with_position():
    expect(with_value(good(), "orders", "margin_mode", 0, "isolated"), "orders", "margin_mode", [0], "differs")


def test_missing_column():
    t = good()
    t["positions"] = t["positions"].drop("entry_price")
    with pytest.raises(BookError, match="positions: column 'entry_price': missing column"):
        rc.Book.from_tables(**t)


def test_wrong_column_type():
    t = good()
    t["positions"] = t["positions"].with_columns(pl.col("account_id").cast(pl.Float64))
    with pytest.raises(BookError, match="account_id.*expected integers"):
        rc.Book.from_tables(**t)


def test_null_in_required_column():
    expect(with_value(good(), "positions", "qty", 1, None), "positions", "qty", [1], "null")


def test_marks():
    book = rc.Book.from_tables(**{k: v for k, v in good().items() if k != "marks"})
    with pytest.raises(BookError, match=r"marks: column 'mark_price': no mark for 1 held symbol\(s\): ETHUSDT"):
        rc.scan(book, pl.DataFrame({"symbol": ["BTCUSDT", "BTCUSD"], "mark_price": [1.0, 1.0]}))
    with pytest.raises(BookError, match=r"marks: column 'mark_price': mark price must be positive \(rows 1;"):
        rc.scan(book, pl.DataFrame({"symbol": ["BTCUSDT", "BTCUSD", "ETHUSDT"], "mark_price": [1.0, 0.0, 1.0]}))
    with pytest.raises(BookError, match=r"marks: column 'symbol': unknown symbol: XRPUSDT \(rows 1;"):
        rc.scan(book, pl.DataFrame({"symbol": ["BTCUSDT", "XRPUSDT"], "mark_price": [1.0, 1.0]}))
    with pytest.raises(BookError, match=r"symbol listed twice \(rows 0, 2;"):
        rc.scan(book, pl.DataFrame({"symbol": ["BTCUSDT", "ETHUSDT", "BTCUSDT"], "mark_price": [1.0] * 3}))
    with pytest.raises(BookError, match="NaN or infinite"):
        rc.scan(book, pl.DataFrame({"symbol": ["BTCUSDT", "BTCUSD", "ETHUSDT"], "mark_price": [1.0, math.nan, 1.0]}))


def test_unsorted_input_is_sorted_for_the_user():
    t = good()
    shuffled = {k: (v.reverse() if k != "instruments" else v.reverse()) for k, v in t.items()}
    a, b = rc.scan(rc.Book.from_tables(**t)), rc.scan(rc.Book.from_tables(**shuffled))
    assert a.positions.equals(b.positions) and a.accounts.equals(b.accounts)


def test_error_lists_first_rows_and_count():
    t = good()
    t["positions"] = pl.concat([t["positions"]] * 1).with_columns(pl.lit(math.nan).alias("qty"))
    err = expect(t, "positions", "qty", [0, 1, 2, 3], "NaN")
    assert "4 in all" in str(err)


def test_categorical_and_pyarrow_input():
    t = {k: v.with_columns(pl.col(pl.String).cast(pl.Categorical)).to_arrow() for k, v in good().items()}
    r = rc.scan(rc.Book.from_tables(**t))
    assert r.positions.height == 4


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["duplicate", "mixed_mode", "none"]))
def test_book_order_and_any_order_load_alike(seed, fault):
    """A file in book order is loaded without sorting (checked in O(n)); any other order is
    sorted. Both give the same book, and a broken rule names the same input rows."""
    from riskcore.gen import generate
    rng = np.random.default_rng(seed)
    tables = generate(30, 200, 12, seed=seed % 1000)
    positions = tables["positions"]
    if fault == "duplicate":
        at = int(rng.integers(positions.height))
        positions = pl.concat([positions.slice(0, at + 1), positions.slice(at, 1), positions.slice(at + 1)])
    elif fault == "mixed_mode":
        cross = np.flatnonzero((positions["margin_mode"].cast(pl.String) == "cross").to_numpy())
        legs = positions.with_row_index().group_by("account_id", "symbol").agg(pl.col("index")).filter(
            pl.col("index").list.len() == 2)["index"].to_list()
        if not legs:
            return
        positions = with_value({"positions": positions}, "positions", "margin_mode", int(legs[0][0]),
                               "isolated" if legs[0][0] in cross else "cross")["positions"]
    perm = rng.permutation(positions.height)
    outcomes = []
    for rows in (np.arange(positions.height), perm):
        try:
            outcomes.append(rc.Book.from_tables(**(tables | {"positions": positions[rows]})))
        except BookError as e:  # rows of the input as given, mapped back to the book-order file
            outcomes.append((e.column, e.problem, sorted(rows[e.rows].tolist())))
    in_order, shuffled = outcomes
    if fault == "none":
        for name in ("wallet", "symbol", "side", "qty", "entry_price", "leverage", "isolated", "isolated_margin",
                     "entry_unit", "inv_leverage"):
            np.testing.assert_array_equal(getattr(in_order.positions, name), getattr(shuffled.positions, name))
        np.testing.assert_array_equal(in_order.wallets.pos_start, shuffled.wallets.pos_start)
    else:
        assert isinstance(in_order, tuple) and in_order == shuffled
