"""The polars script `riskcore bench` times against (riskcore/baseline_polars_scan.py) computes
riskcore's figures and flags: otherwise the comparison would not be of the same work."""

import subprocess
import sys

import numpy as np
import polars as pl
import pytest

import riskcore as rc
from riskcore.bench import BASELINE_SCRIPT
from riskcore.gen import generate
from riskcore.io import book_tables, write_tables

KEYS = {"positions": ["account_id", "symbol", "position_side"], "accounts": ["account_id", "asset"]}


@pytest.mark.parametrize("amounts", ["derived", "given"])
def test_polars_script_computes_riskcore_figures_and_flags(tmp_path, amounts):
    """On a generated book (maintenance amounts derived) and on the same book as riskcore
    writes it (amounts given), the script's flags equal riskcore's and its figures agree."""
    tables = generate(400, 4000, 40, seed=7)
    book = rc.Book.from_tables(**tables)
    write_tables(tables if amounts == "derived" else book_tables(book), tmp_path / "book")
    run = subprocess.run([sys.executable, str(BASELINE_SCRIPT), str(tmp_path / "book"), str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    want = rc.scan(book, liq_prices=False)
    for table, expected in (("positions", want.positions.drop("liq_price")), ("accounts", want.accounts)):
        text = [pl.col(c).cast(pl.String) for c in ("symbol", "position_side", "margin_mode", "asset")
                if c in expected.columns]
        got = pl.read_parquet(tmp_path / "out" / f"{table}.parquet").with_columns(text)
        expected = expected.with_columns(text)
        assert sorted(got.columns) == sorted(expected.columns), table
        both = expected.join(got, on=KEYS[table], how="full", suffix="_script", coalesce=True)
        assert both.height == expected.height == got.height, table
        assert both["liquidate"].any()
        for name in set(expected.columns) - set(KEYS[table]):
            if expected[name].dtype in (pl.Boolean, pl.String):  # flags and margin modes: equal
                assert both[name].equals(both[f"{name}_script"], check_names=False), f"{table}.{name}"
            else:
                np.testing.assert_allclose(both[f"{name}_script"].to_numpy(), both[name].to_numpy(),
                                           rtol=1e-9, atol=1e-9, err_msg=f"{table}.{name}")
