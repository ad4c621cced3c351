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
