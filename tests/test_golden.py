"""docs/model.md §11: Binance's published cross-margin example and the derived-cum tier table."""

import numpy as np
import polars as pl
import pytest

import riskcore as rc


def golden_tables():
    return dict(
        instruments=pl.DataFrame({"symbol": ["BTCUSDT", "ETHUSDT"], "contract_type": ["linear"] * 2,
                                  "face_value": [1.0, 1.0], "taker_fee_rate": [0.0, 0.0]}),
        risk_tiers=pl.DataFrame({"symbol": ["BTCUSDT", "ETHUSDT"], "notional_floor": [0.0, 0.0],
                                 "mmr": [0.025, 0.10], "max_leverage": [20.0, 10.0],
                                 "maintenance_amount": [16300.0, 135365.0]}),
        accounts=pl.DataFrame({"account_id": [1], "balance": [1535443.01]}),
        positions=pl.DataFrame({"account_id": [1, 1], "symbol": ["BTCUSDT", "ETHUSDT"],
                                "qty": [109.488, 3683.979], "entry_price": [32481.98, 1456.84],
                                "margin_mode": ["cross", "cross"], "leverage": [20.0, 10.0]}),
        marks=pl.DataFrame({"symbol": ["BTCUSDT", "ETHUSDT"], "mark_price": [31967.27, 1335.18]}),
    )


def test_binance_cross_margin_example():
    r = rc.scan(rc.Book.from_tables(**golden_tables()))
    pos, acc = r.positions, r.accounts.row(0, named=True)
    assert pos["mm"].round(2).to_list() == [71200.81, 356512.51]
    assert pos["upnl"].round(2).to_list() == [-56354.57, -448192.89]
    assert round(acc["equity"], 2) == 1030895.56
    assert round(acc["risk_ratio"], 4) == 0.4149
    assert pos["liq_price"].round(2).to_list() == [26316.89, 1153.26]
    assert not acc["liquidate"] and not pos["liquidate"].any()


def test_derived_maintenance_amounts():
    tiers = pl.DataFrame({"symbol": ["X"] * 6, "notional_floor": [0.0, 1e5, 5e5, 1e6, 2e6, 5e6],
                          "mmr": [0.025, 0.05, 0.10, 0.15, 0.25, 0.50], "max_leverage": [20.0, 10, 5, 3, 2, 1]})
    book = rc.Book.from_tables(
        instruments=pl.DataFrame({"symbol": ["X"], "contract_type": ["linear"], "face_value": [1.0],
                                  "taker_fee_rate": [0.0]}),
        risk_tiers=tiers.sample(fraction=1.0, shuffle=True, seed=3),  # order of rows must not matter
        accounts=pl.DataFrame({"account_id": [1], "balance": [0.0]}),
        positions=pl.DataFrame({"account_id": [1], "symbol": ["X"], "qty": [1.0], "entry_price": [1.0],
                                "margin_mode": ["cross"], "leverage": [1.0]}))
    np.testing.assert_allclose(book.instruments.tier_cum, [0, 2500, 27500, 77500, 277500, 1527500])


@pytest.mark.parametrize("notional", [5e4, 1e5, 3e5, 5e5, 9.99e5, 1e6, 4e6, 5e6, 8e6])
def test_derived_mm_is_continuous_and_slice_by_slice(notional):
    """With derived cum each slice of notional pays its own tier's rate."""
    floors = [0.0, 1e5, 5e5, 1e6, 2e6, 5e6]
    mmrs = [0.025, 0.05, 0.10, 0.15, 0.25, 0.50]
    book = rc.Book.from_tables(
        instruments=pl.DataFrame({"symbol": ["X"], "contract_type": ["linear"], "face_value": [1.0],
                                  "taker_fee_rate": [0.0]}),
        risk_tiers=pl.DataFrame({"symbol": ["X"] * 6, "notional_floor": floors, "mmr": mmrs,
                                 "max_leverage": [20.0, 10, 5, 3, 2, 1]}),
        accounts=pl.DataFrame({"account_id": [1], "balance": [0.0]}),
        positions=pl.DataFrame({"account_id": [1], "symbol": ["X"], "qty": [notional], "entry_price": [1.0],
                                "margin_mode": ["cross"], "leverage": [1.0]}),
        marks=pl.DataFrame({"symbol": ["X"], "mark_price": [1.0]}))
    bounds = floors[1:] + [np.inf]
    slices = sum(max(0.0, min(notional, hi) - lo) * r for lo, hi, r in zip(floors, bounds, mmrs))
    assert rc.scan(book).positions["mm"][0] == pytest.approx(slices, rel=1e-12)


def test_seed_003_isolated_fraction_model():
    """Seed 003: 0.1 BTC at 50,000 isolated, 100 USDT margin, MM = 50% of used margin = 50."""
    book = rc.Book.from_tables(
        instruments=pl.DataFrame({"symbol": ["BTCUSDT"], "contract_type": ["linear"], "face_value": [1.0],
                                  "taker_fee_rate": [0.0], "mm_im_fraction": [0.5]}),
        risk_tiers=pl.DataFrame({"symbol": [], "notional_floor": [], "mmr": [], "max_leverage": []},
                                schema={"symbol": pl.String, "notional_floor": pl.Float64, "mmr": pl.Float64,
                                        "max_leverage": pl.Float64}),
        accounts=pl.DataFrame({"account_id": [1], "balance": [300.0]}),
        positions=pl.DataFrame({"account_id": [1], "symbol": ["BTCUSDT"], "qty": [0.1], "entry_price": [50000.0],
                                "margin_mode": ["isolated"], "leverage": [50.0], "isolated_margin": [100.0]}))
    def at(price):
        return rc.scan(book, pl.DataFrame({"symbol": ["BTCUSDT"], "mark_price": [price]}))
    r = at(50000.0)
    p = r.positions.row(0, named=True)
    assert p["mm"] == pytest.approx(50.0) and p["margin_balance"] == pytest.approx(100.0) and not p["liquidate"]
    # mm = 0.5 · N/L follows the mark: 100 + 0.1·(P − 50000) = 0.001·P at P = 4900 / 0.099,
    # a loss of ~50.5 USDT; the 300 in the wallet is never touched
    assert p["liq_price"] == pytest.approx(4900 / 0.099, rel=1e-12)
    assert at(49494.0).positions["liquidate"][0]
    assert not at(49496.0).positions["liquidate"][0]
    assert r.accounts["available_balance"][0] == 300.0 and r.accounts["total_equity"][0] == pytest.approx(400.0)
