"""Reference for forced closes (riskcore.engine with liquidate=True, docs/model.md §8.3): a
plain per-position liquidation procedure at the book's marks, in exact fractions and integer
units, using the scan reference for which positions and wallets are liquidatable.
"""

import math

from naive.money import exact, money
from naive.scan import reference_scan


def reference_liquidation(tables, fund_units):
    """A plain per-position liquidation procedure (model §8.3) in exact decimals:
    at the book's marks, every liquidatable isolated position closes (realized PnL floored,
    the fee rounded up and capped at what is left, the rest back to the wallet), then every
    liquidatable cross wallet closes all its cross positions; deficits are paid by the fund.
    Returns balances, isolated margins and the fund, in units."""
    inst = {r["symbol"]: r for r in tables["instruments"].iter_rows(named=True)}
    settle = {s: r.get("settle_asset") or "USDT" for s, r in inst.items()}
    pos_fig, acc_fig = reference_scan(**tables)
    balance = {(r["account_id"], r.get("asset") or "USDT"): int(money(r["balance"]) * 10**8)
               for r in tables["accounts"].iter_rows(named=True)}
    margin, fund = {}, dict(fund_units)
    rows = list(tables["positions"].iter_rows(named=True))

    def key(p):
        return (p["account_id"], p["symbol"], p["position_side"] or "both")

    marks = dict(zip(tables["marks"]["symbol"], tables["marks"]["mark_price"]))

    def close(p):  # every input means the decimal it prints as (model §3)
        i = inst[p["symbol"]]
        q, f, E, P = (exact(x) for x in (p["qty"], i["face_value"], p["entry_price"], marks[p["symbol"]]))
        rate = exact(i.get("liquidation_fee_rate") or 0.0)
        if i["contract_type"] == "inverse":
            upnl, notional = q * f * (1 / E - 1 / P), abs(q) * f / P
        else:
            upnl, notional = q * f * (P - E), abs(q) * f * P
        return math.floor(upnl * 10**8), math.ceil(rate * notional * 10**8)

    for p in rows:
        margin[key(p)] = int(money(p.get("isolated_margin") or 0) * 10**8)
    for (acct, asset), a in sorted(acc_fig.items()):
        wallet_rows = [p for p in rows if p["account_id"] == acct and settle[p["symbol"]] == asset]
        for p in wallet_rows:  # isolated first, as the engine does within a wallet
            if p["margin_mode"] == "isolated" and pos_fig[key(p)]["liquidate"]:
                realized, fee = close(p)
                left = margin[key(p)] + realized
                paid = min(fee, max(left, 0))
                fund[asset] += paid if left >= 0 else left
                balance[(acct, asset)] += max(left, 0) - paid
                margin[key(p)] = 0
        if a["liquidate"]:
            closes = [close(p) for p in wallet_rows if p["margin_mode"] == "cross" and p["qty"] != 0]
            left = balance[(acct, asset)] + sum(r for r, _ in closes)
            paid = min(sum(f for _, f in closes), max(left, 0))
            fund[asset] += paid if left >= 0 else left
            balance[(acct, asset)] = max(left, 0) - paid
    return balance, margin, fund
