"""Nightly settlement (docs/model.md §9) against a plain Fraction reference, to the last unit."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

import riskcore as rc
from riskcore.io import write_tables
from riskcore.settle import HOUSE_ACCOUNT_ID, settle

from books import books, good, representable
from naive.settle import reference_settle


def ledger_units(out: Path):
    df = pl.read_parquet(out / "ledger.parquet")
    return {(r["account_id"], r["asset"], r["symbol"], r["position_side"], r["kind"]): int(r["amount"] * 10**8)
            for r in df.iter_rows(named=True)}


@st.composite
def settlement_cases(draw):
    tables = draw(books(max_symbols=3, max_accounts=4).filter(representable).filter(
        lambda t: HOUSE_ACCOUNT_ID not in t["accounts"]["account_id"].to_list()))
    symbols = tables["instruments"]["symbol"].to_list()
    marks = {s: draw(st.sampled_from([0.00012345, 0.5, 1.0, 102.5, 1335.18, 31967.27, 60000.0])) for s in symbols}
    rates = {s: draw(st.sampled_from([0.0, 0.0001, -0.0001, 0.000375, -0.0075, 0.01])) for s in symbols}
    steps = draw(st.sampled_from([("funding",), ("realize",), ("funding", "realize")]))
    return tables, marks, rates, steps


@given(settlement_cases())
def test_ledger_matches_the_exact_reference(case):
    tables, marks, rates, steps = case
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_tables(tables, tmp / "book")
        pl.DataFrame({"symbol": list(marks), "mark_price": list(marks.values()),
                      "funding_rate": [rates[s] for s in marks]}).write_parquet(tmp / "marks.parquet")
        want, house = reference_settle(tables, marks, rates, steps)
        try:
            settle(tmp / "book", tmp / "out", marks=tmp / "marks.parquet", settlement_id="s1", steps=steps, part_rows=3)
        except rc.BookError as e:  # refused only when an amount really is beyond 64-bit money
            assert "exceeds 64-bit" in str(e) and max(map(abs, want.values())) >= 2**61, e
            assert not (tmp / "out").exists()
            return
        got = ledger_units(tmp / "out")
        assert {k: v for k, v in got.items() if k[0] != HOUSE_ACCOUNT_ID} == want
        assert {(k[1], k[4]): v for k, v in got.items() if k[0] == HOUSE_ACCOUNT_ID} == house
        assert sum(got.values()) == 0
        # each wallet's money change (balance + isolated margins) equals its ledger sum
        before, after = rc.load_book(tmp / "book"), rc.load_book(tmp / "out")
        change = defaultdict(int)
        for book, sign in ((before, -1), (after, 1)):
            for w, (a, asset) in enumerate(zip(book.wallets.account_id, book.wallets.asset)):
                lo, hi = book.wallets.pos_start[w], book.wallets.pos_start[w + 1]
                change[(int(a), book.assets[asset])] += sign * int(book.wallets.balance[w] + book.positions.isolated_margin[lo:hi].sum())
        per_wallet = defaultdict(int)
        for k, v in got.items():
            if k[0] != HOUSE_ACCOUNT_ID:
                per_wallet[(k[0], k[1])] += v
        assert {k: v for k, v in change.items() if v} == {k: v for k, v in per_wallet.items() if v}
        if "realize" in steps:  # entry prices now stand at the settlement prices
            pos = after.positions
            held = pos.qty != 0
            assert all(pos.entry_price[held] == [marks[after.instruments.symbol[s]] for s in pos.symbol[held]])


def _book(tmp_path, tables=None, marks=None):
    tables = tables or good()
    write_tables(tables, tmp_path / "book")
    (marks if marks is not None else tables["marks"].with_columns(pl.lit(0.0001).alias("funding_rate"))).write_parquet(
        tmp_path / "marks.parquet")
    return tmp_path / "book", tmp_path / "marks.parquet"


def test_the_spec_example_is_exact(tmp_path):
    t = good()
    t["positions"] = t["positions"].with_columns(pl.Series("qty", [3.0, -5.0, 1.0, -2.0]))
    book, marks = _book(tmp_path, t, pl.DataFrame({"symbol": ["BTCUSDT", "BTCUSD", "ETHUSDT"],
                                                   "mark_price": [102.5, 60500.0, 3050.0],
                                                   "funding_rate": [0.0001, 0.0, 0.0]}))
    settle(book, tmp_path / "out", marks=marks, settlement_id="x", steps=("funding",))
    assert ledger_units(tmp_path / "out")[(1, "USDT", "BTCUSDT", "both", "funding")] == -3075000  # 0.03075


def test_repeated_id_is_refused_and_nothing_written(tmp_path):
    book, marks = _book(tmp_path)
    settle(book, tmp_path / "once", marks=marks, settlement_id="2026-11-21")
    with pytest.raises(rc.BookError, match="settlement 2026-11-21 was already applied"):
        settle(tmp_path / "once", tmp_path / "twice", marks=marks, settlement_id="2026-11-21")
    assert not (tmp_path / "twice").exists()
    settle(tmp_path / "once", tmp_path / "next", marks=marks, settlement_id="2026-11-22")
    assert pl.read_parquet(tmp_path / "next" / "settlements.parquet")["settlement_id"].to_list() == ["2026-11-21", "2026-11-22"]


@pytest.mark.parametrize("change,words", [
    (lambda t, m: (t, m.filter(pl.col("symbol") != "ETHUSDT")), "no settlement price for held symbol(s): ETHUSDT"),
    (lambda t, m: (t, m.with_columns(pl.when(pl.col("symbol") == "BTCUSD").then(None).otherwise(pl.col("funding_rate")).alias("funding_rate"))),
     "no funding rate for held symbol(s): BTCUSD"),
    (lambda t, m: ({**t, "positions": t["positions"].with_columns(pl.Series("qty", [1.0, float("nan"), 1.0, -1.0]))}, m),
     "column 'qty': NaN or infinite value (rows 1; 1 in all)"),
    (lambda t, m: ({**t, "positions": t["positions"].with_columns(pl.Series("symbol", ["BTCUSDT", "BTCUSD", "ETHUSDT", "XRPUSDT"]))}, m),
     "unknown symbol: XRPUSDT (rows 3;"),
    (lambda t, m: (t, m.with_columns(pl.Series("mark_price", [1.0, float("nan"), 1.0]))), "NaN or infinite"),
])
def test_bad_input_is_refused_and_nothing_written(tmp_path, change, words):
    t = good()
    m = t["marks"].with_columns(pl.lit(0.0001).alias("funding_rate"))
    t, m = change(t, m)
    book, marks = _book(tmp_path, t, m)
    with pytest.raises(rc.BookError, match=words.replace("(", r"\(").replace(")", r"\)")):
        settle(book, tmp_path / "out", marks=marks, settlement_id="s")
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_streams_parts_with_an_account_spanning_them(tmp_path):
    from riskcore.gen import generate
    tables = generate(50, 400, 12, seed=4)
    whole, marks = _book(tmp_path / "a", tables, tables["marks"])
    parts = tmp_path / "b" / "book"
    write_tables({k: v for k, v in tables.items() if k != "positions"}, parts)
    (parts / "positions").mkdir()
    pos = pl.read_parquet(whole / "positions.parquet").sample(fraction=1.0, shuffle=True, seed=1)
    for k in range(4):  # shuffled, so accounts span parts
        pos.slice(k * 100, 100).write_parquet(parts / "positions" / f"p{k}.parquet")
    settle(whole, tmp_path / "a" / "out", marks=marks, settlement_id="n")
    settle(parts, tmp_path / "b" / "out", marks=marks, settlement_id="n", part_rows=40)
    assert ledger_units(tmp_path / "a" / "out") == ledger_units(tmp_path / "b" / "out")
    a, b = rc.load_book(tmp_path / "a" / "out"), rc.load_book(tmp_path / "b" / "out")
    assert (a.wallets.balance == b.wallets.balance).all() and (a.positions.isolated_margin == b.positions.isolated_margin).all()


def test_a_killed_run_leaves_no_output_and_the_input_untouched(tmp_path):
    from riskcore.gen import generate
    tables = generate(3000, 60000, 50, seed=5)
    book, marks = _book(tmp_path, tables, tables["marks"])
    before = {p: p.read_bytes() for p in book.rglob("*.parquet")}
    env = dict(os.environ, PYTHONPATH=str(Path(rc.__file__).parent.parent))
    proc = subprocess.Popen([sys.executable, "-m", "riskcore", "settle", str(book), "--marks", str(marks), "--id", "k",
                             "--out", str(tmp_path / "out"), "--part-rows", "500"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(tmp_path.glob(".out.riskcore-*/positions/part-*.parquet"))) < 4:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".out.riskcore-*")), "the run finished before it could be killed"
    assert not (tmp_path / "out").exists()
    assert {p: p.read_bytes() for p in book.rglob("*.parquet")} == before
    # the next run starts clean and succeeds
    settle(book, tmp_path / "out", marks=marks, settlement_id="k")
    assert (tmp_path / "out" / "settlements.parquet").exists()
    assert not list(tmp_path.glob(".out.riskcore-*")), "the dead run's staging folder was not cleaned"
