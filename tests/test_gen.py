"""The synthetic book: deterministic, the requested shape, and realistic enough to matter."""

import polars as pl

import riskcore as rc
from riskcore.gen import generate


def test_deterministic_for_a_seed():
    a, b = generate(200, 2000, 30, seed=11), generate(200, 2000, 30, seed=11)
    assert all(a[k].equals(b[k]) for k in a)
    c = generate(200, 2000, 30, seed=12)
    assert not a["positions"].equals(c["positions"])


def test_shape_and_mix():
    t = generate(2000, 20000, 100, seed=1)
    pos = t["positions"]
    assert pos.height == 20000
    per_account = pos.group_by("account_id").len()["len"]
    assert per_account.len() == 2000 and per_account.min() >= 1 and per_account.max() <= 50
    iso = (pos["margin_mode"] == "isolated").mean()
    assert 0.15 < iso < 0.25
    assert pos.filter(pl.col("position_side") != "both").height > 0   # hedge mode
    assert (pos["qty"] == 0).sum() > 0                                  # flat rows
    inverse = t["instruments"].filter(pl.col("contract_type") == "inverse")["symbol"]
    assert pos.filter(pl.col("symbol").cast(pl.String).is_in(inverse.to_list())).height > 0
    top = pos["symbol"].value_counts(sort=True)
    assert top["count"][0] > 5 * top["count"][-1]                       # Zipf-like popularity
    r = rc.scan(rc.Book.from_tables(**t))
    share = r.accounts["liquidate"].mean()
    assert 0 < share < 0.1                                              # some accounts near liquidation
    assert r.positions.filter(pl.col("liquidate") & (pl.col("margin_mode") == "isolated")).height > 0


def test_bad_arguments():
    import pytest
    with pytest.raises(rc.BookError):
        generate(100, 50, 10)


# --- the tick stream (gen --ticks): statistics a desk would check ---------------------------

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from riskcore.gen import SECONDS_PER_YEAR, generate_ticks, tick_model  # noqa: E402


@pytest.fixture(scope="module")
def book60():
    return generate(2000, 20000, 60, seed=1)


def _returns(ticks):
    """1-tick log returns, (tick, symbol), from an all-symbol stream."""
    wide = ticks.pivot(on="symbol", index="ts", values="mark_price").sort("ts")
    return wide.columns[1:], np.diff(np.log(wide.drop("ts").to_numpy()), axis=0)


def test_ticks_deterministic_and_shaped(book60):
    a = generate_ticks(book60, 50, seed=5)
    assert a.equals(generate_ticks(book60, 50, seed=5)) and not a.equals(generate_ticks(book60, 50, seed=6))
    assert a.height == 50 * 60                                   # all-symbol feed: every symbol every tick
    per_ts = a.group_by("ts").agg(pl.col("symbol").n_unique())["symbol"]
    assert (per_ts == 60).all()
    assert a["ts"].unique().sort().diff().drop_nulls().dt.total_milliseconds().unique().to_list() == [1000]
    one = generate_ticks(book60, 5000, seed=5, feed="symbol")
    assert one.height == 5000 and one["ts"].is_unique().all()    # one symbol per tick, time moving on
    assert (one["ts"].diff().drop_nulls().dt.total_milliseconds() >= 1).all()
    counts = one["symbol"].value_counts(sort=True)
    assert counts["symbol"][0] == "BTCUSDT" and counts["count"][0] > 5 * counts["count"][-1]


def test_vols_in_realistic_ranges(book60):
    model = tick_model(book60, 1)
    vol = dict(zip(model["symbol"], model["vol"]))
    assert 0.5 <= vol["BTCUSDT"] <= 0.8 and vol["BTCUSD"] == vol["BTCUSDT"]
    thin = model.filter(pl.col("coin").str.starts_with("C"))["vol"]
    assert thin.min() > vol["BTCUSDT"] and thin.max() <= 2.5
    # the realised annualised vol of the stream (jumps off) is the model's, symbol by symbol
    names, r = _returns(generate_ticks(book60, 20_000, seed=1, market_jumps_per_year=0, jump_rate_factor=0))
    realised = r.std(axis=0) * np.sqrt(SECONDS_PER_YEAR)
    assert np.allclose(realised, [vol[s] for s in names], rtol=0.05)


def test_symbols_move_together(book60):
    names, r = _returns(generate_ticks(book60, 20_000, seed=3, market_jumps_per_year=0, jump_rate_factor=0))
    c = np.corrcoef(r.T)
    i = {s: k for k, s in enumerate(names)}
    assert c[i["BTCUSDT"], i["BTCUSD"]] > 0.95        # one coin's linear and inverse contracts
    assert c[i["ETHUSDT"], i["ETHUSD"]] > 0.95
    assert 0.6 < c[i["BTCUSDT"], i["ETHUSDT"]] < 0.95  # majors: strongly, not perfectly
    assert 0.15 < c[np.triu_indices(len(names), 1)].mean() < 0.6  # a market factor, not independent walks
    # and the contracts of one coin stay within a few bp of each other (the premium reverts)
    wide_gap = np.abs(np.cumsum(r[:, i["BTCUSDT"]]) - np.cumsum(r[:, i["BTCUSD"]]))
    assert wide_gap.max() < 0.002


def test_jump_rate_and_size(book60):
    """Jumps as often as the model says: counted as 1-second moves beyond 12 sigma of the
    noise, with the rates raised so a few hours show hundreds."""
    factor = 50_000.0
    model = tick_model(book60, 4)
    names, r = _returns(generate_ticks(book60, 10_000, seed=4, market_jumps_per_year=0, jump_rate_factor=factor))
    sigma = model["vol"].to_numpy() / np.sqrt(SECONDS_PER_YEAR)
    scale = model["jump_scale"].to_numpy()
    big = np.abs(r) > 12 * sigma
    # a contract shares its coin's jumps: count each coin once, at its first contract
    first = model.with_row_index().group_by("coin").agg(pl.col("index").min())["index"].to_numpy()
    rate = model["jumps_per_year"].to_numpy() * factor / SECONDS_PER_YEAR
    expected = (rate * np.exp(-12 * sigma / scale))[first].sum() * r.shape[0]   # jumps larger than the cut
    observed = big[:, first].sum()
    assert abs(observed - expected) < 5 * np.sqrt(expected), (observed, expected)
    sizes = np.abs(r[big])
    assert 0.01 < np.median(sizes) < 0.1                 # percent-sized, not basis points or halvings
