"""docs/model.md §6: a position re-marked at its liquidation price sits exactly on the boundary."""

import math

import polars as pl
from hypothesis import given

import riskcore as rc

from books import books

REL = 1e-9


def boundary_margin(result, tables, row):
    """(margin − mm − fee, scale) of what liquidates `row`: its own margin or its wallet's."""
    if row["margin_mode"] == "isolated":
        p = result.positions.filter((pl.col("account_id") == row["account_id"]) & (pl.col("symbol") == row["symbol"])
                                    & (pl.col("position_side") == row["position_side"])).row(0, named=True)
        return p["margin_balance"] - p["fee"] - p["mm"], abs(p["margin_balance"]) + p["notional"] + p["mm"], p["liquidate"]
    settle = dict(zip(tables["instruments"]["symbol"], tables["instruments"]["settle_asset"].fill_null("USDT")))
    asset = settle[row["symbol"]]
    a = result.accounts.filter((pl.col("account_id") == row["account_id"]) & (pl.col("asset") == asset)).row(0, named=True)
    same = [s for s, x in settle.items() if x == asset]
    pos = result.positions.filter((pl.col("account_id") == row["account_id"])
                                  & pl.col("symbol").cast(pl.String).is_in(same))
    scale = abs(a["equity"]) + float((pos["notional"] + pos["upnl"].abs() + pos["mm"].abs()).sum()) \
        + abs(a["equity"] - float(pos["upnl"].sum()))
    return a["equity"] - a["cross_fee"] - a["cross_mm"], scale, a["liquidate"]


def remark(tables, symbol, price):
    return tables["marks"].with_columns(
        pl.when(pl.col("symbol") == symbol).then(price).otherwise(pl.col("mark_price")).alias("mark_price"))


@given(books(derived_only=True))
def test_liq_price_is_on_the_boundary_and_safe_side_is_safe(tables):
    book = rc.Book.from_tables(**tables)
    base = rc.scan(book)
    marks = dict(zip(tables["marks"]["symbol"], tables["marks"]["mark_price"]))
    for row in base.positions.filter(pl.col("liq_price").is_not_null()).head(6).iter_rows(named=True):
        liq, mark = row["liq_price"], marks[row["symbol"]]
        assert liq > 0 and math.isfinite(liq)
        at = rc.scan(book, remark(tables, row["symbol"], liq))
        margin, scale, _ = boundary_margin(at, tables, row)
        assert abs(margin) <= REL * scale, (row, liq, margin, scale)
        if not row["liquidate"] and abs(liq / mark - 1) > 1e-6:
            hair = liq * (1 + 1e-7 * math.copysign(1, mark - liq))
            _, _, liquidate = boundary_margin(rc.scan(book, remark(tables, row["symbol"], hair)), tables, row)
            assert not liquidate, (row, liq, hair)


@given(books())
def test_liq_price_null_only_when_flat_or_unreachable(tables):
    """Every liq_price is positive and finite, or null; flat rows are always null."""
    r = rc.scan(rc.Book.from_tables(**tables)).positions
    assert r.filter(pl.col("qty") == 0)["liq_price"].null_count() == r.filter(pl.col("qty") == 0).height
    prices = r["liq_price"].drop_nulls()
    assert (prices > 0).all() and prices.is_finite().all()


def test_long_fully_covered_by_margin_has_no_liq_price():
    r = rc.scan(rc.Book.from_tables(
        instruments=pl.DataFrame({"symbol": ["X"], "contract_type": ["linear"], "face_value": [1.0],
                                  "taker_fee_rate": [0.0]}),
        risk_tiers=pl.DataFrame({"symbol": ["X"], "notional_floor": [0.0], "mmr": [0.01], "max_leverage": [50.0]}),
        accounts=pl.DataFrame({"account_id": [1], "balance": [0.0]}),
        positions=pl.DataFrame({"account_id": [1], "symbol": ["X"], "qty": [1.0], "entry_price": [100.0],
                                "margin_mode": ["isolated"], "leverage": [1.0], "isolated_margin": [100.0]}),
        marks=pl.DataFrame({"symbol": ["X"], "mark_price": [100.0]})))
    assert r.positions["liq_price"][0] is None


def test_hedge_legs_move_together():
    """Cross hedge mode: long 2 and short 1 of X move with one price; the net is long 1."""
    r = rc.scan(rc.Book.from_tables(
        instruments=pl.DataFrame({"symbol": ["X"], "contract_type": ["linear"], "face_value": [1.0],
                                  "taker_fee_rate": [0.0]}),
        risk_tiers=pl.DataFrame({"symbol": ["X"], "notional_floor": [0.0], "mmr": [0.0], "max_leverage": [50.0]}),
        accounts=pl.DataFrame({"account_id": [1], "balance": [50.0]}),
        positions=pl.DataFrame({"account_id": [1, 1], "symbol": ["X", "X"], "position_side": ["long", "short"],
                                "qty": [2.0, -1.0], "entry_price": [100.0, 100.0], "margin_mode": ["cross"] * 2,
                                "leverage": [10.0, 10.0]}),
        marks=pl.DataFrame({"symbol": ["X"], "mark_price": [100.0]})))
    # equity 50 + 2(P−100) − (P−100) = 0 at P = 50, for both legs
    assert r.positions["liq_price"].to_list() == [50.0, 50.0]


def test_inverse_isolated_short():
    """Inverse short 10 contracts of 100 USD at 50,000, 0.01 BTC margin, no fee, mmr 0.5%."""
    r = rc.scan(rc.Book.from_tables(
        instruments=pl.DataFrame({"symbol": ["BTCUSD"], "contract_type": ["inverse"], "settle_asset": ["BTC"],
                                  "face_value": [100.0], "taker_fee_rate": [0.0]}),
        risk_tiers=pl.DataFrame({"symbol": ["BTCUSD"], "notional_floor": [0.0], "mmr": [0.005],
                                 "max_leverage": [100.0]}),
        accounts=pl.DataFrame({"account_id": [1], "asset": ["BTC"], "balance": [1.0]}),
        positions=pl.DataFrame({"account_id": [1], "symbol": ["BTCUSD"], "qty": [-10.0], "entry_price": [50000.0],
                                "margin_mode": ["isolated"], "leverage": [20.0], "isolated_margin": [0.01]}),
        marks=pl.DataFrame({"symbol": ["BTCUSD"], "mark_price": [50000.0]})))
    # with x = 1/P: 0.01 − 1000·(1/50000 − x) = 0.005·1000·x  →  x = 0.01 / 995, P = 99,500
    assert abs(r.positions["liq_price"][0] - 995 / 0.01) < 1e-6
