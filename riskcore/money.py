"""Money as exact fixed-point integers ("units" = 10**-scale of the asset).

Balances and isolated margins are held as int64 units so that settlement, margin
operations and forced closes move money exactly. Float inputs (float64, float32) mean the
decimal they print as (their shortest round-trip form) and are rounded half-to-even to the
asset's scale; integers of any width and Arrow/polars decimals are converted exactly by
integer arithmetic (rounded half-to-even only if they carry more places than the asset's
scale); an amount beyond 64-bit units is refused naming its rows.
"""

from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, localcontext

import numpy as np
import polars as pl
import pyarrow as pa
from numba import njit

from .config import JIT, JIT_EXACT
from .errors import BookError, MoneyOverflowError

_INT64_MAX = 2**63 - 1
_POW10_I64 = np.array([10**k for k in range(19)], dtype=np.int64)


def _round_decimal(x: float, scale: int) -> int:
    return int((Decimal(repr(x)).scaleb(scale)).to_integral_value(rounding=ROUND_HALF_EVEN))


def _floats_to_units(x: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 units, too_big) of finite floats, each meaning the decimal it prints as."""
    product = x * 10.0 ** scale
    # The float product is within |product|·2**-51 of the decimal's; rint is certified
    # unless that is near a rounding tie or beyond 2**52: those few rows go through decimal.
    frac = np.abs(product - np.trunc(product))
    window = np.maximum(1e-6, np.abs(product) * 2.0**-48)
    slow = (np.abs(frac - 0.5) < window) | (np.abs(product) >= 2.0**52)
    too_big = np.abs(product) >= 2.0**64  # surely too big: no decimal needed
    units = np.where(slow, 0.0, np.rint(product)).astype(np.int64)
    for i in np.flatnonzero(slow & ~too_big):
        u = _round_decimal(float(x[i]), int(scale[i]))
        if abs(u) > _INT64_MAX:
            too_big[i] = True
        else:
            units[i] = u
    return units, too_big


def _fixed_to_units_fast(col: pl.Series, places: int, scale: np.ndarray) -> tuple[np.ndarray, bool]:
    """The usual case of _fixed_to_units in one compiled pass: every value's integer fits
    int64 (a decimal128's high word is its low word's sign) and so does every result.
    Returns (units, True), or (_, False) when some row needs the general path."""
    if col.dtype in (pl.UInt64, pl.Int128, pl.UInt128):
        return np.empty(0, np.int64), False
    if col.dtype.is_integer():
        low = col.cast(pl.Int64).to_numpy()
        high = low >> 63
    else:  # decimal128: 16 little-endian bytes per value, low word first
        arr = col.to_arrow()
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        words = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=2 * len(arr), offset=16 * arr.offset)
        low, high = words[0::2], words[1::2]
    return _fixed_units_kernel(low, high, places, np.ascontiguousarray(scale))


@njit(**JIT)
def _fixed_units_kernel(low, high, places, scale):
    out = np.empty(len(low), dtype=np.int64)
    for i in range(len(low)):
        v = low[i]
        k = scale[i] - places
        if high[i] != (v >> 63) or k > 18 or k < -18:
            return out, False
        if k >= 0:
            m = _POW10_I64[k]
            if v > _INT64_MAX // m or v < -(_INT64_MAX // m):
                return out, False
            out[i] = v * m
        else:  # round half to even: q = floor(v / d), up when the remainder passes half
            d = _POW10_I64[-k]
            q = v // d
            r = v - q * d
            out[i] = q + (1 if 2 * r > d or (2 * r == d and q % 2 != 0) else 0)
    return out, True


def _fixed_to_units(values: pl.Series, places: int, scale: np.ndarray, table: str, name: str) -> np.ndarray:
    """Integers meaning values·10^-places (an integer column, places 0, or a decimal's
    physical Int128) as int64 units at `scale` per row: exact integer arithmetic, rounded
    half-to-even where places > scale; |units| > 2**63 - 1 is refused naming the rows."""
    from .tables import out_of_int64
    if values.dtype == pl.UInt128:
        big = out_of_int64(values, 2**127 - 1)
        if big.any():
            raise BookError(table, name, "amount too large for 64-bit fixed point", np.flatnonzero(big))
    v = pl.DataFrame({"v": values.cast(pl.Int128)})
    out = np.empty(len(values), dtype=np.int64)
    for s in np.unique(scale):
        rows = np.flatnonzero(scale == s)
        part = v[rows] if len(rows) != len(out) else v
        k = int(s) - places
        if k >= 0:
            m = 10**k
            limit = _INT64_MAX // m
            big = out_of_int64(part["v"], limit, -limit)
            if big.any():
                raise BookError(table, name, "amount too large for 64-bit fixed point", rows[big])
            out[rows] = part["v"].cast(pl.Int64).to_numpy() * (np.int64(m) if limit else 0)
        else:  # round half to even: q = floor(v / d), up when the remainder passes half
            d = pl.lit(10**-k, dtype=pl.Int128)
            two = pl.lit(2, dtype=pl.Int128)
            q = pl.col("v").floordiv(d)
            r = pl.col("v") - q * d
            odd = (q - q.floordiv(two) * two) != pl.lit(0, dtype=pl.Int128)
            up = (r > d - r) | ((r == d - r) & odd)
            units = part.select(q + up.cast(pl.Int128)).to_series()
            big = out_of_int64(units, _INT64_MAX, -_INT64_MAX)
            if big.any():
                raise BookError(table, name, "amount too large for 64-bit fixed point", rows[big])
            out[rows] = units.cast(pl.Int64).to_numpy()
    return out


def to_units(col: pl.Series, scale: np.ndarray, table: str) -> np.ndarray:
    """Convert a money column to int64 units at `scale` per row, exactly: integers (any
    width, signed or not) and decimals (any scale) by integer arithmetic, rounded half to
    even beyond the scale; floats (float64, float32) mean the decimal they print as."""
    from .tables import as_float64
    scale = np.broadcast_to(np.asarray(scale, dtype=np.int64), (len(col),))
    if col.null_count():
        raise BookError(table, col.name, "null money amount", np.flatnonzero(col.is_null().to_numpy()))
    if isinstance(col.dtype, pl.Decimal) or col.dtype.is_integer():
        places = col.dtype.scale if isinstance(col.dtype, pl.Decimal) else 0
        units, exact = _fixed_to_units_fast(col, places, scale)
        if exact:
            return units
        return _fixed_to_units(col.to_physical() if places else col, places, scale, table, col.name)
    if not col.dtype.is_float():
        raise BookError(table, col.name, f"expected a number or decimal, got {col.dtype}")
    x = as_float64(col).to_numpy()
    bad = ~np.isfinite(x)
    if bad.any():
        raise BookError(table, col.name, "NaN or infinite amount", np.flatnonzero(bad))
    units, too_big = _floats_to_units(x, scale)
    if too_big.any():
        raise BookError(table, col.name, "amount too large for 64-bit fixed point", np.flatnonzero(too_big))
    return units


INT64_MIN = -(2**63)
INT64_MAX = _INT64_MAX
_MASK32 = np.uint64(0xFFFFFFFF)
_DECIMAL128_LIMIT = 10**38
_POW10 = np.array([10**k for k in range(20)], dtype=np.uint64)
_INT64_MAX_OVER = np.array([_INT64_MAX // 10**k for k in range(20)], dtype=np.int64)


@njit(**JIT_EXACT)
def add_exact(acc, k, u):
    """acc[0, k]·2^32 + acc[1, k] += u exactly, keeping 0 ≤ acc[1, k] < 2^32: the signed high
    half and the 32-bit low half of each value are added apart, so the sum cannot wrap below
    2^31 additions (np.sum of int64 wraps)."""
    acc[0, k] += u >> 32
    low = acc[1, k] + (u & 0xFFFFFFFF)
    acc[0, k] += low >> 32
    acc[1, k] = low & 0xFFFFFFFF


@njit(**JIT_EXACT)
def _run_sums(values, starts):
    acc = np.zeros((2, len(starts)), np.int64)
    for r in range(len(starts)):
        for i in range(starts[r], starts[r + 1] if r + 1 < len(starts) else len(values)):
            add_exact(acc, r, values[i])
    return acc


def split_sum(values: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact sums of int64 runs (the runs begin at the ascending `starts`) as (high, low)
    int64 parts, each sum being high·2^32 + low (add_exact)."""
    values = np.ascontiguousarray(values, dtype=np.int64)
    if not len(values):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    acc = _run_sums(values, np.ascontiguousarray(starts, dtype=np.int64))
    return acc[0], acc[1]


def exact_total(values: np.ndarray) -> int:
    """Σ values exactly, as a Python int (np.sum of int64 wraps)."""
    hi, lo = split_sum(values, np.zeros(1, np.int64)) if len(values) else (np.zeros(1, np.int64),) * 2
    return (int(hi[0]) << 32) + int(lo[0])


def add_split(base: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """base + hi·2^32 + lo exactly, per row: (int64 result, fits). Rows far from the limit in
    int64 arithmetic; the few near it (or beyond) in Python integers."""
    base, hi, lo = (np.asarray(x, dtype=np.int64) for x in (base, hi, lo))
    estimate = np.abs(base.astype(np.float64)) + np.abs(hi.astype(np.float64)) * 2.0**32 + np.abs(lo.astype(np.float64))
    easy = estimate < 2.0**61
    out = np.zeros(len(base), dtype=np.int64)
    out[easy] = base[easy] + (hi[easy] << 32) + lo[easy]
    fits = easy.copy()
    for i in np.flatnonzero(~easy):
        total = int(base[i]) + (int(hi[i]) << 32) + int(lo[i])
        if INT64_MIN <= total <= INT64_MAX:
            out[i] = total
            fits[i] = True
    return out, fits


def _mul_u64(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full 128-bit products of uint64 arrays as (high, low) uint64 words (32-bit limbs)."""
    a_lo, a_hi, b_lo, b_hi = a & _MASK32, a >> np.uint64(32), b & _MASK32, b >> np.uint64(32)
    ll, hl, lh, hh = a_lo * b_lo, a_hi * b_lo, a_lo * b_hi, a_hi * b_hi
    cross = (ll >> np.uint64(32)) + (hl & _MASK32) + (lh & _MASK32)
    low = (cross << np.uint64(32)) | (ll & _MASK32)
    high = hh + (hl >> np.uint64(32)) + (lh >> np.uint64(32)) + (cross >> np.uint64(32))
    return high, low


def units_to_decimal(units: np.ndarray, scale: int, from_scale=None) -> pa.Array:
    """An exact Arrow decimal128(38, scale) column from int64 units, without a per-row loop.

    `from_scale` (an int or one per row, <= scale) is the scale the units are in: they are
    multiplied by 10^(scale - from_scale) in 128-bit words, exact for every int64 amount at
    every shift up to 19 places (a wider shift, rare, is checked against the 38 digits)."""
    units = np.ascontiguousarray(units, dtype=np.int64)
    words = np.empty((len(units), 2), dtype=np.int64)  # little-endian int128: low word, high word
    shift = None if from_scale is None else np.broadcast_to(scale - np.asarray(from_scale, dtype=np.int64), units.shape)
    if shift is not None and np.any(shift < 0):
        raise ValueError("units_to_decimal: from_scale above the column's scale")
    if shift is None or not shift.any():  # every row already at the column's scale (the usual book)
        words[:, 0] = units
        words[:, 1] = units >> 63
    else:
        wide = shift > 19
        factor = _POW10[np.minimum(shift, 19)]
        # the common case: the product fits int64 (|units| ≤ (2^63 − 1) // 10^shift)
        small = (units <= _INT64_MAX_OVER[np.minimum(shift, 19)]) & (units >= -_INT64_MAX_OVER[np.minimum(shift, 19)])
        product = units * factor.view(np.int64)
        words[:, 0] = product
        words[:, 1] = product >> 63
        big = np.flatnonzero(~small & ~wide)
        if len(big):  # the rest in 128-bit words
            part = units[big]
            neg = part < 0
            raw = part.view(np.uint64)
            mag = np.where(neg, ~raw + np.uint64(1), raw)  # |units|, 2^63 included
            high, low = _mul_u64(mag, factor[big])
            # two's complement of the 128-bit magnitude where negative
            n_low = ~low + np.uint64(1)
            n_high = ~high + (n_low == 0).astype(np.uint64)
            words[big, 0] = np.where(neg, n_low, low).view(np.int64)
            words[big, 1] = np.where(neg, n_high, high).view(np.int64)
        for i in np.flatnonzero(wide & (units != 0)):
            v = int(units[i]) * 10 ** int(shift[i])
            if abs(v) >= _DECIMAL128_LIMIT:
                raise MoneyOverflowError("money", None, f"an amount needs more than 38 digits at scale {scale}", [i])
            words[i, 0] = np.uint64(v & (2**64 - 1)).view(np.int64)
            words[i, 1] = np.uint64((v >> 64) & (2**64 - 1)).view(np.int64)
    return pa.Array.from_buffers(pa.decimal128(38, scale), len(units), [None, pa.py_buffer(words)])


MAX_PLACES = 18
_EPS = np.finfo(np.float64).eps
# Powers of ten as exact floats (10^0..10^22 are exact; beyond, correctly rounded) and int64s.
_POW10F = np.array([10.0**k for k in range(40)])
_POW10I = np.array([10**k for k in range(MAX_PLACES + 1)], dtype=np.int64)

# The exact-amount paths below are compiled per row (JIT_EXACT: IEEE arithmetic throughout,
# since each path's certificate rests on exact float operations). The array functions are the
# same row rules over arrays.


@njit(**JIT_EXACT)
def _pow10(k):
    return _POW10F[k] if 0 <= k < _POW10F.size else 10.0**k


@njit(**JIT_EXACT)
def float_places(x):
    """Decimal places of the float's shortest round-trip decimal, or -1 (beyond 18 places or
    not finite): the first k at which an integer m with |m| < 2^53 gives m / 10^k == x."""
    if not np.isfinite(x):
        return -1
    for k in range(MAX_PLACES + 1):
        scale = _POW10F[k]
        m = np.rint(x * scale)  # x·10^k itself rounds, so the mantissa may be one off
        for candidate in (m, m - 1.0, m + 1.0):
            if abs(candidate) < 2.0**53 and candidate / scale == x:
                return k
    return -1


@njit(**JIT_EXACT)
def _plus(a, b):
    """Decimal places of a product from its factors': the sum, -1 (unknown) if either is."""
    return -1 if a < 0 or b < 0 else a + b


@njit(**JIT_EXACT)
def _floor_grid(value, gross, places, scale):
    """(floor(value·10^scale), ok) for a value that is an exact decimal with `places` places:
    value·10^places is an integer and the float product is within 8 ulp of gross·10^places,
    so below 2^47 rint recovers that integer exactly; the floor to `scale` is then integer
    arithmetic. Not ok: the exact fallback decides."""
    if places < 0 or places > MAX_PLACES or not abs(gross * _POW10F[places]) < 2.0**47:
        return 0, False
    n = np.int64(np.rint(value * _POW10F[places]))
    shift = scale - places
    if shift < 0:
        return (n // _POW10I[-shift], True) if -shift <= MAX_PLACES else (0, False)
    if n == 0:
        return 0, True
    if not abs(n * _pow10(shift)) < 2.0**62:  # also keeps shift within _POW10I
        return 0, False
    return n * _POW10I[shift], True


@njit(**JIT_EXACT)
def _floor_ratio(numerator, gross, places, divisor, divisor_places, scale):
    """(floor(numerator / divisor · 10^scale), ok) where both are exact decimals (numerator
    with `places` places, divisor with `divisor_places`): integer mantissas and one exact
    integer floor division; ok where every integer fits in 62 bits."""
    if places < 0 or places > MAX_PLACES or divisor_places < 0 or not abs(gross * _POW10F[places]) < 2.0**47:
        return 0, False
    m_float = np.rint(divisor * _POW10F[divisor_places])
    if not (m_float > 0 and m_float < 2.0**62):
        return 0, False
    n, m = np.int64(np.rint(numerator * _POW10F[places])), np.int64(m_float)
    e = scale - places + divisor_places  # floor(n·10^e / m)
    up, down = max(e, 0), max(-e, 0)
    if not (abs(n * _pow10(up)) < 2.0**62 and m * _pow10(down) < 2.0**62):
        return 0, False
    return (n * _POW10I[up] if n else 0) // (m * _POW10I[down]), True


@njit(**JIT_EXACT)
def _floor_certified(units_f, bound):
    """(floor(units_f), ok) of a float estimate whose absolute error is below `bound`:
    certified where the estimate is farther than the bound from an integer."""
    f = np.floor(units_f)
    if np.isfinite(units_f) and units_f - f > bound and f + 1 - units_f > bound and abs(units_f) < 2.0**62:
        return np.int64(f), True
    return 0, False


@njit(**JIT_EXACT)
def row_amount(funding, q, E, f, inverse, P, r, scale, dq, fixed_places, numer_places, dP):
    """(units, ok) of one row's amount (exact_amounts); not ok: no fast path certifies it."""
    if q == 0 or (r == 0 if funding else P == E):
        return 0, True
    if funding:
        value = -q * f * r / P if inverse else -q * f * P * r
        gross = abs(value)
        if inverse:  # an integer division by the price's mantissa
            num = -q * f * r
            units, ok = _floor_ratio(num, abs(num), _plus(dq, numer_places), P, dP, scale)
        else:
            units, ok = _floor_grid(value, gross, _plus(dq, fixed_places), scale)
    else:
        value = q * f * (P - E) / (E * P) if inverse else q * f * (P - E)
        gross = abs(q) * f * ((P + E) / (E * P) if inverse else P + E)
        dE = float_places(E)
        units, ok = 0, False
        if not inverse:
            units, ok = _floor_grid(value, gross, _plus(_plus(dq, fixed_places), -1 if dE < 0 or dP < 0 else max(dP, dE)),
                                    scale)
    if ok:
        return units, True
    unit_scale = _pow10(scale)
    return _floor_certified(value * unit_scale, 8 * _EPS * gross * unit_scale)


@njit(**JIT_EXACT)
def amounts_kernel(funding, qty, entry, symbol, face, inverse, price, rate, scale, qty_places, fixed_places,
                   numer_places, price_places):
    """Every row's floored amount in one pass (exact_amounts has the arguments), and where
    no fast path certifies it (those rows' units are 0 here)."""
    units = np.zeros(len(qty), np.int64)
    needs_exact = np.zeros(len(qty), np.bool_)
    for i in range(len(qty)):
        s = symbol[i]
        u, ok = row_amount(funding, qty[i], entry[i], face[s], inverse[s], price[s], rate[s], scale[s], qty_places[i],
                        fixed_places[s], numer_places[s], price_places[s])
        if ok:
            units[i] = u
        else:
            needs_exact[i] = True
    return units, needs_exact


@njit(**JIT_EXACT)
def decimal_places(x):
    """Decimal places of each float's shortest round-trip decimal (the decimal it prints
    as), or -1 beyond 18 places or non-finite. The float means exactly that decimal."""
    out = np.empty(len(x), np.int64)
    for i in range(len(x)):
        out[i] = float_places(x[i])
    return out


def add_places(*places: np.ndarray) -> np.ndarray:
    """Decimal places of a product: the sum, or -1 (unknown) if any factor's is unknown."""
    total = sum(np.asarray(p, dtype=np.int64) for p in places)
    unknown = np.any([np.asarray(p) < 0 for p in places], axis=0)
    return np.where(unknown, -1, total)


@njit(**JIT_EXACT)
def floor_grid(value, gross, places, scale):
    """_floor_grid per row: (units, ok)."""
    units, ok = np.zeros(len(value), np.int64), np.zeros(len(value), np.bool_)
    for i in range(len(value)):
        units[i], ok[i] = _floor_grid(value[i], gross[i], places[i], scale[i])
    return units, ok


@njit(**JIT_EXACT)
def floor_certified(units_f, bound):
    """_floor_certified per row: (units, ok)."""
    units, ok = np.zeros(len(units_f), np.int64), np.zeros(len(units_f), np.bool_)
    for i in range(len(units_f)):
        units[i], ok[i] = _floor_certified(units_f[i], bound[i])
    return units, ok


def exact(x: float):
    """The exact rational value of the decimal a float prints as."""
    from fractions import Fraction
    return Fraction(Decimal(repr(float(x))))


def exact_amounts(kind: str, qty, entry, face, inverse, price, rate, scale, symbol=None,
                  qty_places=None) -> np.ndarray:
    """Per row, floor(amount · 10^scale) exactly, for kind "funding" (−q·f·P·rate, inverse
    −q·f/P·rate) or "realize" (q·f·(P − E), inverse q·f·(1/E − 1/P)); every input means the
    decimal it prints as. `face`, `inverse`, `price`, `rate` and `scale` are per row, or per
    symbol with `symbol` each row's index into them (settlement: their decimal places are
    then found once per symbol); `qty_places` (decimal_places(qty)) may be given, found once
    for several kinds. One compiled pass (amounts_kernel): linear amounts are
    decimals on a grid fixed by their inputs' places (_floor_grid); inverse funding is an
    integer division by the price's mantissa (_floor_ratio); otherwise a float provably away
    from a unit boundary (_floor_certified); the rare rest in Decimal or Fraction."""
    qty = np.atleast_1d(np.asarray(qty, dtype=np.float64))
    entry = np.broadcast_to(np.asarray(entry, dtype=np.float64), qty.shape)
    if symbol is None:  # per row: broadcast like numpy
        symbol = np.arange(len(qty))
        face, inverse, price, rate, scale = (np.broadcast_to(a, qty.shape) for a in (face, inverse, price, rate, scale))
    qty, entry, face, price, rate = (np.ascontiguousarray(a, dtype=np.float64) for a in (qty, entry, face, price, rate))
    scale = np.ascontiguousarray(scale, dtype=np.int64)
    inverse = np.ascontiguousarray(inverse, dtype=bool)
    symbol = np.ascontiguousarray(symbol)
    funding = kind == "funding"
    df, dP = decimal_places(face), decimal_places(price)
    dr = decimal_places(np.nan_to_num(rate))
    # places of the per-symbol factors: the linear grid's (f·P·r or f) and inverse funding's numerator's (f·r)
    fixed = add_places(df, dP, dr) if funding else df
    dq = decimal_places(qty) if qty_places is None else qty_places
    units, needs_exact = amounts_kernel(funding, qty, entry, symbol, face, inverse, price, rate, scale, dq, fixed,
                                        add_places(df, dr), dP)
    too_big = []
    for i in np.flatnonzero(needs_exact):
        s = symbol[i]
        exact_units = decimal_amount(kind, qty[i], face[s], price[s], entry[i], rate[s] if funding else 0.0,
                                    bool(inverse[s]), int(scale[s]))
        if exact_units is None:
            too_big.append(i)
        else:
            units[i] = exact_units
    if too_big:  # rows of the arrays given: the caller names its file and rows
        raise MoneyOverflowError("positions", None, f"the {kind} amount of these positions (qty, entry price and "
                                                    f"price together) exceeds 64-bit fixed point money", too_big)
    return units


def decimal_amount(kind, q, f, P, E, r, inverse, scale) -> int:
    """The rare row no vectorised path certifies: exact rational arithmetic."""
    import math
    if inverse:
        q, f, P, E, r = (exact(v) for v in (q, f, P, E, r))
        value = -q * f * r / P if kind == "funding" else q * f * (1 / E - 1 / P)
        units = math.floor(value * 10**scale)
    else:  # products and differences of decimals: exact in Decimal at this precision
        with localcontext() as ctx:
            ctx.prec = 120
            q, f, P, E, r = (Decimal(repr(float(v))) for v in (q, f, P, E, r))
            value = -q * f * P * r if kind == "funding" else q * f * (P - E)
            units = int(value.scaleb(scale).to_integral_value(rounding=ROUND_FLOOR))
    return None if abs(units) >= 2**62 else units  # None: too large for 64-bit money


# -- directed rounding for forced closes (the tick engine, docs/model.md §8.3-8.5) --------

def realized_units(qty, entry, face, inverse, price, scale) -> np.ndarray:
    """Realized PnL of closing `qty` at `price`, floor(q·f·(P − E)·10^scale) (inverse
    q·f·(1/E − 1/P)), exactly, every input meaning the decimal it prints as (exact_amounts
    "realize"). An inverse close at an infinite price (1/P = 0) realizes floor(q·f/E)."""
    qty, entry, face, price = (np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (qty, entry, face, price))
    inverse = np.broadcast_to(np.asarray(inverse, dtype=bool), qty.shape)
    scale = np.broadcast_to(np.asarray(scale, dtype=np.int64), qty.shape)
    at_inf = inverse & np.isinf(price)
    units = exact_amounts("realize", qty, entry, face, inverse, np.where(at_inf, entry, price), np.zeros(len(qty)),
                          scale)
    if at_inf.any():  # q·f/E = −q·f·(−1)/E: the inverse funding formula at P = E, rate −1
        k = int(at_inf.sum())
        units[at_inf] = exact_amounts("funding", qty[at_inf], entry[at_inf], face[at_inf], np.ones(k, bool),
                                      entry[at_inf], np.full(k, -1.0), scale[at_inf])
    return units


def fee_units(qty, entry, face, inverse, price, rate, scale) -> np.ndarray:
    """A fee on the notional of `qty` at `price`, rounded up: ceil(abs(q)·f·P·rate·10^scale)
    (inverse abs(q)·f/P·rate), exactly (= −floor of the funding amount of abs(q))."""
    return -exact_amounts("funding", np.abs(np.asarray(qty, dtype=np.float64)), entry, face, inverse, price, rate,
                          scale)


@njit(**JIT_EXACT)
def ceil_share(units, part, whole):
    """units · part / whole rounded up (a share of an integer amount, e.g. the fund's cover of
    an unmatched quantity)."""
    return np.int64(np.ceil(units * part / whole))


@njit(**JIT_EXACT)
def spread_float(total, weights):
    """spread_units of a total below 2^52 in magnitude, in floats: each share floor(total ·
    weight / Σ weights), the remainder to the largest weight (the first on ties); all of it
    to the first row when the weights sum to 0."""
    out = np.zeros(len(weights), np.int64)
    whole = 0.0
    for w in weights:
        whole += float(w)
    if total == 0 or whole <= 0:
        if total != 0 and len(out):
            out[0] = total
        return out
    largest, spread = 0, 0
    for j in range(len(weights)):
        out[j] = np.int64(np.floor(total * float(weights[j]) / whole))
        spread += out[j]
        if weights[j] > weights[largest]:
            largest = j
    out[largest] += total - spread
    return out


def spread_units(total: int, weights: np.ndarray) -> np.ndarray:
    """Split an integer amount over rows in proportion to int64 weights, exactly: each share
    floored, the remainder to the largest weight (the first on ties); all of it to the first
    row when the weights sum to 0."""
    weights = np.ascontiguousarray(weights, dtype=np.int64)
    if abs(total) < 2**52:
        return spread_float(int(total), weights)
    whole = sum(int(x) for x in weights)
    if whole <= 0:
        return np.array([total] + [0] * (len(weights) - 1), dtype=np.int64) if len(weights) else weights[:0]
    # float shares could round past the total (or int64): exact integer shares instead
    out = [total * int(x) // whole for x in weights]
    out[int(np.argmax(weights))] += total - sum(out)
    return np.array(out, dtype=np.int64)


def int64_parts(total: int) -> list[int]:
    """An exact integer as int64 amounts that sum to it (one, unless it is beyond int64):
    how a move of any size is handed to Book.apply_moves, which sums a target's moves exactly."""
    parts = []
    while total > INT64_MAX:
        parts.append(INT64_MAX)
        total -= INT64_MAX
    while total < INT64_MIN:
        parts.append(INT64_MIN)
        total -= INT64_MIN
    parts.append(total)
    return parts
