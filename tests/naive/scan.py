"""Reference for the scan (riskcore.scan, docs/model.md §4–5): every position's and
account's figures and liquidation flags, straight from the tables.

Independent of riskcore's loader and kernels: reads the polars input tables row by row and
computes in Decimal (50 digits) from the exact values of the float inputs.
"""

from collections import defaultdict
from decimal import Decimal, localcontext

from naive.money import money

D = Decimal
INF = D("Infinity")


def rows(table):
    return table if isinstance(table, list) else list(table.iter_rows(named=True))


def tiers_by_symbol(risk_tiers):
    """{symbol: [(floor, mmr, cum, max_leverage)] by floor}; cum derived where not given."""
    by_symbol = defaultdict(list)
    for r in rows(risk_tiers):
        by_symbol[r["symbol"]].append(r)
    tiers = {}
    for sym, tier_rows in by_symbol.items():
        tier_rows.sort(key=lambda r: r["notional_floor"])
        out, cum, prev_mmr = [], D(0), None
        for i, r in enumerate(tier_rows):
            floor, mmr = D(r["notional_floor"]), D(r["mmr"])
            if r.get("maintenance_amount") is not None:
                cum = D(r["maintenance_amount"])
            elif i == 0:
                cum = D(0)
            else:
                cum = cum + floor * (mmr - prev_mmr)
            out.append((floor, mmr, cum, D(r["max_leverage"])))
            prev_mmr = mmr
        tiers[sym] = out
    return tiers


def position_figures(p, inst, tiers, mark):
    q, f, E, L, P = D(p["qty"]), D(inst["face_value"]), D(p["entry_price"]), D(p["leverage"]), D(mark)
    if q == 0:
        return dict(notional=D(0), upnl=D(0), im=D(0), mm=D(0), fee=D(0), roe=D(0), gross=D(0), mm_gross=D(0))
    if inst["contract_type"] == "inverse":
        notional, upnl, entry_im = abs(q) * f / P, q * f * (1 / E - 1 / P), abs(q) * f / E / L
        gross = abs(q) * f * (1 / E + 1 / P)
    else:
        notional, upnl, entry_im = abs(q) * f * P, q * f * (P - E), abs(q) * f * E / L
        gross = abs(q) * f * (P + E)
    im = notional / L
    if inst.get("mm_im_fraction") is not None:
        mm = D(inst["mm_im_fraction"]) * im
        mm_gross = D(0)
    else:
        floor, mmr, cum, _ = [t for t in tiers[p["symbol"]] if t[0] <= notional][-1]
        mm = notional * mmr - cum
        # mm may cancel (N·mmr − cum), and a notional one rounding step either side of a
        # floor may take the neighbouring tier: compare against the size of its terms
        mm_gross = notional * max(t[1] for t in tiers[p["symbol"]]) + abs(cum)
    return dict(notional=notional, upnl=upnl, im=im, mm=mm, fee=notional * D(inst["taker_fee_rate"]),
                roe=upnl / entry_im, gross=gross, mm_gross=mm_gross)


def reference_scan(instruments, risk_tiers, accounts, positions, orders=None, marks=None):
    """({(account_id, symbol, side): figures}, {(account_id, asset): figures})."""
    with localcontext() as ctx:
        ctx.prec = 50
        inst = {r["symbol"]: r for r in rows(instruments)}
        settle = {s: (r.get("settle_asset") or "USDT") for s, r in inst.items()}
        tiers = tiers_by_symbol(risk_tiers)
        mark = {r["symbol"]: r["mark_price"] for r in rows(marks)}
        wallets = {}
        for r in rows(accounts):
            wallets[(r["account_id"], r.get("asset") or "USDT")] = dict(
                balance=money(r["balance"]), upnl=D(0), mm=D(0), im=D(0), fee=D(0), iso=D(0), size=D(0),
                order_margin=D(0), has_cross=False)
        pos_out = {}
        for p in rows(positions):
            side = p.get("position_side") or "both"
            w = wallets[(p["account_id"], settle[p["symbol"]])]
            fig = position_figures(p, inst[p["symbol"]], tiers, mark.get(p["symbol"]))
            w["size"] += fig["notional"] + abs(fig["upnl"]) + fig["im"] + abs(fig["mm"])
            if p["margin_mode"] == "isolated":
                mb = money(p.get("isolated_margin") or 0) + fig["upnl"]
                fig["margin_balance"] = mb
                fig["risk_ratio"] = D(0) if p["qty"] == 0 else (INF if mb <= 0 else (fig["mm"] + fig["fee"]) / mb)
                fig["liquidate"] = p["qty"] != 0 and mb - fig["fee"] <= fig["mm"]
                w["iso"] += mb
            else:
                fig["margin_balance"] = fig["risk_ratio"] = None
                for k in ("upnl", "mm", "im", "fee"):
                    w[k] += fig[k]
                w["has_cross"] |= p["qty"] != 0
                fig["wallet"] = w
            pos_out[(p["account_id"], p["symbol"], side)] = fig
        for o in (rows(orders) if orders is not None else ()):
            i = inst[o["symbol"]]
            q, f, price, L = D(o["qty"]), D(i["face_value"]), D(o["price"]), D(o["leverage"])
            value = 1 / price if i["contract_type"] == "inverse" else price
            wallets[(o["account_id"], settle[o["symbol"]])]["order_margin"] += abs(q) * f * value / L
        acc_out = {}
        for key, w in wallets.items():
            equity = w["balance"] + w["upnl"]
            liq = w["has_cross"] and equity - w["fee"] <= w["mm"]
            rr = D(0) if not w["has_cross"] else (INF if equity <= 0 else (w["mm"] + w["fee"]) / equity)
            acc_out[key] = dict(
                equity=equity, cross_mm=w["mm"], cross_im=w["im"], cross_fee=w["fee"],
                order_margin=w["order_margin"], risk_ratio=rr,
                available_balance=max(D(0), equity - w["im"] - w["order_margin"]),
                transferable=max(D(0), min(w["balance"], equity - w["mm"] - w["order_margin"])),
                total_equity=equity + w["iso"], liquidate=liq,
                margin=equity - w["fee"] - w["mm"], scale=abs(w["balance"]) + w["size"] + abs(w["iso"]) + w["order_margin"])
            w["liquidate"], w["margin"], w["scale"] = liq, acc_out[key]["margin"], acc_out[key]["scale"]
        for fig in pos_out.values():
            w = fig.pop("wallet", None)
            if w is not None:
                fig["liquidate"] = w["liquidate"] and fig["notional"] != 0
                fig["wallet_margin"], fig["wallet_scale"] = w["margin"], w["scale"]
        return pos_out, acc_out
