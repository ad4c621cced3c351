"""Reference for settlement (riskcore.settle, docs/model.md §9): every position's funding
and realized-PnL ledger amount in exact fractions, floored to units, and the house account's
opposite entries per asset and kind.
"""

import math
from collections import defaultdict

from naive.money import exact


def reference_settle(tables, marks, rates, steps):
    """{(account, asset, symbol, side, kind): units} for positions, and house per (asset, kind)."""
    inst = {r["symbol"]: r for r in tables["instruments"].iter_rows(named=True)}
    ledger, house = {}, defaultdict(int)
    for p in tables["positions"].iter_rows(named=True):
        i = inst[p["symbol"]]
        q, f, E, P = exact(p["qty"]), exact(i["face_value"]), exact(p["entry_price"]), exact(marks[p["symbol"]])
        inverse = i["contract_type"] == "inverse"
        asset = i.get("settle_asset") or "USDT"
        for kind in steps:
            units = reference_amount(kind, q, f, E, P, exact(rates[p["symbol"]]) if kind == "funding" else 0, inverse, 8)
            if units:
                ledger[(p["account_id"], asset, p["symbol"], p["position_side"] or "both", kind)] = units
                house[(asset, kind)] -= units
    return ledger, {k: v for k, v in house.items() if v}


def reference_amount(kind, q, f, E, P, r, inverse, scale) -> int:
    """One position's amount in units, from exact inputs (Fractions): model §9, floored."""
    if kind == "funding":
        value = -q * f * r / P if inverse else -q * f * P * r
    else:
        value = q * f * (1 / E - 1 / P) if inverse else q * f * (P - E)
    return math.floor(value * 10**scale)
