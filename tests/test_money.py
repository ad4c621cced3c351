"""Exact money: float inputs mean their printed decimals; directed rounding is certified."""

import math
from decimal import Decimal

import numpy as np
import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from riskcore.money import add_places, decimal_places, floor_certified, floor_grid, to_units

from naive.money import exact

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
