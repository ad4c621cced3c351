"""The book's one API for money and orders: apply_moves (exact, all or nothing) and
cancel_orders (order margin re-derived), against plain Python integers and a fresh load."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import riskcore as rc
from riskcore.book import order_margin
from riskcore.errors import MoneyOverflowError
from riskcore.gen import generate

INT64 = st.integers(-(2**63), 2**63 - 1)


@pytest.fixture(scope="module")
def tables():
    return generate(100, 500, 5, seed=1)


@given(moves=st.lists(st.tuples(st.integers(0, 4), INT64), max_size=8), start=st.lists(INT64, min_size=5, max_size=5))
def test_apply_moves_is_exact_and_all_or_nothing(tables, moves, start):
    book = rc.Book.from_tables(**tables)
    book.wallets.balance[:5] = start
    expected = list(start)
    for w, units in moves:
        expected[w] += units
    before = book.wallets.balance.copy()
    ids = np.array([w for w, _ in moves], dtype=np.int64)
    units = np.array([u for _, u in moves], dtype=np.int64)
    if all(-(2**63) <= v <= 2**63 - 1 for v in expected):
        book.apply_moves(balance=(ids, units))
        assert book.wallets.balance[:5].tolist() == expected
        assert (book.wallets.balance[5:] == before[5:]).all()
    else:
        with pytest.raises(MoneyOverflowError, match="column 'balance'"):
            book.apply_moves(balance=(ids, units))
        assert (book.wallets.balance == before).all()


def test_apply_moves_checks_every_target_before_changing_any(tables):
    book = rc.Book.from_tables(**tables)
    iso = np.flatnonzero(book.positions.isolated)[:1]
    book.positions.isolated_margin[iso] = 1
    balance, margin = book.wallets.balance.copy(), book.positions.isolated_margin.copy()
    with pytest.raises(MoneyOverflowError, match="isolated_margin"):
        book.apply_moves(balance=(np.array([0]), np.array([5])), isolated_margin=(iso, np.array([2**63 - 1])))
    assert (book.wallets.balance == balance).all() and (book.positions.isolated_margin == margin).all()


def test_cancel_orders_matches_a_book_loaded_without_them(tables):
    book = rc.Book.from_tables(**tables)
    gone = np.arange(0, len(book.orders), 3)
    book.cancel_orders(gone)
    keep = np.ones(len(tables["orders"]), bool)
    fresh = rc.Book.from_tables(**tables)
    keep[gone] = False
    assert len(book.orders) == int(keep.sum())
    np.testing.assert_allclose(book.wallets.order_margin, order_margin(book.orders, book.instruments, len(book.wallets)))
    assert (book.wallets.order_margin <= fresh.wallets.order_margin + 1e-9).all()


def test_every_entry_point_takes_a_book_or_a_path(tables, tmp_path):
    from riskcore.io import write_tables
    from riskcore.gen import generate_requests
    import polars as pl
    write_tables(tables, tmp_path / "book")
    requests = generate_requests(tables, 50, seed=2)
    requests.write_parquet(tmp_path / "requests.parquet")
    marks = tables["marks"].with_columns(pl.lit(0.0001).alias("funding_rate"))
    marks.write_parquet(tmp_path / "marks.parquet")
    fund = pl.DataFrame({"asset": ["USDT"], "balance": [1000.0]})
    fund.write_parquet(tmp_path / "fund.parquet")
    book = rc.load_book(tmp_path / "book")

    assert rc.scan(tmp_path / "book").accounts.equals(rc.scan(book).accounts)
    assert rc.scan(book, tmp_path / "marks.parquet").accounts.equals(rc.scan(book, marks).accounts)
    a, b = rc.apply_requests(tmp_path / "book", tmp_path / "requests.parquet")[1], rc.apply_requests(book, requests)[1]
    assert a.equals(b)
    e1 = rc.Engine(str(tmp_path / "book"), insurance_fund=tmp_path / "fund.parquet", liquidate=True)
    e2 = rc.Engine(book, insurance_fund=fund, liquidate=True)
    assert e1.insurance_fund().equals(e2.insurance_fund()) and e1.events().equals(e2.events())
    rc.settle(book, tmp_path / "s1", marks=marks, settlement_id="d")
    rc.settle(tmp_path / "book", tmp_path / "s2", marks=tmp_path / "marks.parquet", settlement_id="d")
    for name in ("accounts.parquet", "ledger.parquet"):
        assert pl.read_parquet(tmp_path / "s1" / name).equals(pl.read_parquet(tmp_path / "s2" / name))
