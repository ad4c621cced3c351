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
