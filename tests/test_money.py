"""Exact money: float inputs mean their printed decimals; directed rounding is certified."""

import math
from decimal import Decimal

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from riskcore.errors import MoneyOverflowError
from riskcore.money import add_places, amounts_kernel, decimal_places, exact_amounts, floor_certified, floor_grid, \
    split_sum, to_units

from naive.money import exact
from naive.settle import reference_amount

decimals = st.decimals(min_value=Decimal("-1e9"), max_value=Decimal("1e9"), places=8, allow_nan=False)


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12), max_size=50))
def test_decimal_places_match_the_printed_decimal(xs):
    places = decimal_places(np.array(xs, dtype=np.float64))
    for x, k in zip(xs, places):
        d = Decimal(repr(x))
        want = max(0, -d.normalize().as_tuple().exponent)
        if want <= 18 and abs(d.scaleb(want)) < 2**53:
            assert k == want, (x, k, want)
        else:  # too many digits for an exact float mantissa: reported as unknown (-1)
            assert k in (-1, want), (x, k, want)


def test_the_spec_example_is_exact():
    q, p, r = np.array([3.0]), np.array([102.5]), np.array([0.0001])
    places = add_places(decimal_places(q), decimal_places(p), decimal_places(r))
    units, ok = floor_grid(q * p * r, q * p * r, places, np.array([8]))
    assert ok.all() and units.tolist() == [3075000]  # 0.03075 exactly, not 0.030749999…


@given(st.lists(st.tuples(decimals, decimals), min_size=1, max_size=30))
def test_floor_grid_equals_exact_floor(pairs):
    a = np.array([float(x) for x, _ in pairs])
    b = np.array([float(y) for _, y in pairs])
    value = a * b
    places = add_places(decimal_places(a), decimal_places(b))
    units, ok = floor_grid(value, np.abs(value), places, np.full(len(a), 8))
    for x, y, u, good in zip(a, b, units, ok):
        if good:
            assert u == math.floor(exact(x) * exact(y) * 10**8)


@given(st.lists(st.tuples(decimals, decimals.filter(lambda d: abs(d) > Decimal("1e-6"))), min_size=1, max_size=30))
def test_floor_certified_equals_exact_floor(pairs):
    a = np.array([float(x) for x, _ in pairs])
    b = np.array([float(y) for _, y in pairs])
    units_f = a / b * 1e8
    units, ok = floor_certified(units_f, 8 * np.finfo(float).eps * np.abs(units_f) + 1e-300)
    for x, y, u, good in zip(a, b, units, ok):
        if good:
            assert u == math.floor(exact(x) / exact(y) * 10**8)


def test_to_units_half_even_on_printed_decimal():
    assert to_units(pl.Series("b", [0.000000015, 0.000000025, 1535443.01, -2.5e-8]), 8, "t").tolist() == [2, 2, 153544301000000, -2]


def printed_decimals(max_places, low, high):
    """Floats meaning decimals of up to max_places places in [low, high] (some on a coarse grid)."""
    return st.integers(0, max_places).flatmap(
        lambda k: st.decimals(min_value=Decimal(low), max_value=Decimal(high), places=k)).map(float)


@st.composite
def settlement_rows(draw):
    """Per-symbol (face, inverse, price, rate, scale) and per-row (qty, entry, symbol): prices
    with many places and large quantities push rows off the grid paths onto the certified
    float path and the exact fallback; entries equal to the price and zero rates are flat."""
    n_symbols = draw(st.integers(1, 4))
    face = draw(st.lists(st.sampled_from([1.0, 0.001, 0.1, 10.0, 100.0]), min_size=n_symbols, max_size=n_symbols))
    inverse = draw(st.lists(st.booleans(), min_size=n_symbols, max_size=n_symbols))
    price = draw(st.lists(printed_decimals(10, "0.0001", "100000"), min_size=n_symbols, max_size=n_symbols))
    rate = draw(st.lists(st.one_of(st.just(0.0), printed_decimals(6, "-0.01", "0.01")), min_size=n_symbols,
                         max_size=n_symbols))
    scale = draw(st.lists(st.sampled_from([0, 2, 6, 8, 10]), min_size=n_symbols, max_size=n_symbols))
    n = draw(st.integers(1, 25))
    symbol = draw(st.lists(st.integers(0, n_symbols - 1), min_size=n, max_size=n))
    qty = draw(st.lists(st.one_of(st.just(0.0), printed_decimals(8, "-10000000", "10000000")), min_size=n, max_size=n))
    entry = [draw(st.one_of(st.just(price[s]), printed_decimals(10, "0.0001", "100000"))) for s in symbol]
    return tuple(np.array(a) for a in (face, inverse, price, rate, scale, qty, entry, symbol))


@given(st.sampled_from(["funding", "realize"]), settlement_rows())
def test_exact_amounts_equal_the_exact_floor(kind, rows):
    """The compiled amounts (every path: grid, integer ratio, certified float, exact fallback)
    equal the Fraction reference to the unit, per symbol (settlement) and per row (closes)."""
    face, inverse, price, rate, scale, qty, entry, symbol = rows
    want = [reference_amount(kind, exact(q), exact(face[s]), exact(e), exact(price[s]), exact(rate[s]),
                             bool(inverse[s]), int(scale[s])) for q, e, s in zip(qty, entry, symbol)]
    per_symbol = (face, inverse, price, rate, scale)
    per_row = tuple(a[symbol] for a in per_symbol)
    if max(map(abs, want)) >= 2**62:  # beyond 64-bit money: refused
        with pytest.raises(MoneyOverflowError):
            exact_amounts(kind, qty, entry, *per_symbol, symbol=symbol)
        return
    assert exact_amounts(kind, qty, entry, *per_symbol, symbol=symbol).tolist() == want
    assert exact_amounts(kind, qty, entry, *per_row).tolist() == want


@pytest.mark.parametrize("kind,q,E,f,inverse,P,r", [
    ("funding", 2.4145837, 62515.36, 1.0, False, 60000.0, 0.000115),   # 13 places: off the grid, float too close
    ("realize", 1110812.5, 0.0018032596, 1.0, False, 0.00170403, 0.0),  # 11 places: off the grid
    ("realize", 3.0, 60000.0, 100.0, True, 50000.0, 0.0),               # −0.001 exactly: on a unit boundary
])
def test_rows_no_fast_path_certifies_take_the_exact_fallback(kind, q, E, f, inverse, P, r):
    one = lambda x, t=np.float64: np.array([x], dtype=t)  # noqa: E731
    places = [decimal_places(one(x)) for x in (f, P, r)]
    fixed = add_places(*places) if kind == "funding" else places[0]
    _, needs_exact = amounts_kernel(kind == "funding", one(q), one(E), np.zeros(1, np.int64), one(f),
                                    one(inverse, bool), one(P), one(r), one(8, np.int64), decimal_places(one(q)), fixed,
                                    add_places(places[0], places[2]), places[1])
    assert needs_exact.tolist() == [True]
    want = reference_amount(kind, exact(q), exact(f), exact(E), exact(P), exact(r), inverse, 8)
    assert exact_amounts(kind, one(q), one(E), one(f), one(inverse, bool), one(P), one(r), one(8, np.int64)).tolist() \
        == [want]


@given(st.lists(st.lists(st.integers(-2**63, 2**63 - 1), min_size=1, max_size=40), min_size=1, max_size=8))
def test_split_sums_are_exact_near_the_int64_limits(runs):
    """split_sum (money.add_exact, which settlement's kernel also sums with): each run's sum
    as high·2^32 + low, exactly, however far beyond int64 it goes."""
    values = np.array([v for run in runs for v in run], dtype=np.int64)
    starts = np.cumsum([0] + [len(run) for run in runs[:-1]])
    hi, lo = split_sum(values, starts)
    assert [(int(h) << 32) + int(l) for h, l in zip(hi, lo)] == [sum(run) for run in runs]
    assert all(0 <= int(l) < 2**32 for l in lo)
