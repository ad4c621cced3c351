"""Full-scan benchmarks, riskcore side by side with the polars pipeline.

Default test run: each runs once as a correctness test (--benchmark-disable). Timed run:
    python -m pytest benchmarks --benchmark-enable -m "heavy or not heavy"
"""

import numpy as np
import polars as pl
import pytest

import riskcore as rc
from riskcore.baselines import bandwidth_floor, numpy_flags, polars_flags
from riskcore.scan import scan_into

from bench_books import setup

@pytest.mark.parametrize("size", ["100k", "1M", "10M"])
def test_scan_flags(benchmark, size):
    """Liquidation flags and account figures (the per-tick check), no per-position outputs."""
    _, book, out = setup(size)
    benchmark(scan_into, book, book.mark, out, with_positions=False)
    assert out.accounts["liquidate"].any()


@pytest.mark.parametrize("size", ["100k", "1M", "10M"])
def test_scan_all_figures(benchmark, size):
    _, book, out = setup(size)
    benchmark(scan_into, book, book.mark, out, with_liq_price=False)
    assert np.isfinite(out.positions["mm"]).all()


@pytest.mark.parametrize("size", ["100k", "1M", "10M"])
def test_scan_with_liq_prices(benchmark, size):
    _, book, out = setup(size)
    benchmark(scan_into, book, book.mark, out)
    assert np.isfinite(out.positions["liq_price"]).any()


@pytest.mark.parametrize("size", ["100k", "1M", "10M"])
def test_polars_pipeline_baseline(benchmark, size):
    """Same flags as the kernel; the result is checked against riskcore's."""
    tables, book, _ = setup(size)
    iso, accounts = benchmark(polars_flags, tables)
    r = rc.scan(book, liq_prices=False)
    want_acc = r.accounts.filter("liquidate").select("account_id", pl.col("asset").cast(pl.String))
    want_iso = r.positions.filter(pl.col("liquidate") & (pl.col("margin_mode") == "isolated")).select(
        "account_id", pl.col("symbol").cast(pl.String), pl.col("position_side").cast(pl.String))
    assert accounts.sort(pl.all()).equals(want_acc.sort(pl.all()))
    assert iso.sort(pl.all()).equals(want_iso.sort(pl.all()))


@pytest.mark.parametrize("size", ["100k", "1M", "10M"])
def test_numpy_baseline(benchmark, size):
    """Same flags as the kernel, checked against riskcore's."""
    _, book, out = setup(size)
    iso, wallets = benchmark(numpy_flags, book, book.mark)
    scan_into(book, book.mark, out, with_positions=False)
    assert (wallets == out.accounts["liquidate"]).all()
    assert (iso == (out.positions["liquidate"] & book.positions.isolated)).all()


@pytest.mark.parametrize("size", ["100k", "1M", "10M"])
def test_bandwidth_floor(benchmark, size):
    _, book, _ = setup(size)
    benchmark(bandwidth_floor(book, 9))
