"""Reference for what a number in a table means (docs/model.md §3), the rule riskcore.money
implements: a float means the decimal it prints as (its shortest round-trip repr); money is
that decimal rounded half-even to the asset's scale.

The one test-side definition of these helpers; riskcore.money.exact is deliberately not
used, so that the references stay independent of the code under test.
"""

from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction

INT64_MAX = 2**63 - 1


def printed(x) -> Decimal:
    """The decimal a float prints as, exactly."""
    return Decimal(repr(float(x)))


def exact(x) -> Fraction:
    """The exact rational value of the decimal a float prints as."""
    return Fraction(printed(x))


def money(x, scale=8) -> Decimal:
    """Model §3: a float amount means the decimal it prints as, rounded half-even to the scale."""
    exact = x if isinstance(x, Decimal) else printed(x)
    return exact.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_EVEN)


def reference_units(value: Decimal, scale: int):
    """value as integer units of 10^-scale, rounded half-even; None where beyond int64
    (riskcore refuses such an amount as too large)."""
    with localcontext() as ctx:
        ctx.prec = 200
        units = int(value.scaleb(scale).to_integral_value(rounding=ROUND_HALF_EVEN))
    return units if abs(units) <= INT64_MAX else None  # None: refused as too large
