"""Reference for margin operations (riskcore.ops, docs/model.md §7): requests applied one
at a time, every figure recomputed from scratch by the scan reference, money in Decimal."""

from decimal import ROUND_CEILING

from naive.money import money
from naive.scan import D, reference_scan, rows, tiers_by_symbol

UNIT = D("1e-8")
REL = D("1e-9")


class Ambiguous(Exception):
    """A decision within float noise of its threshold: the caller adopts the engine's."""


def decide(lhs, rhs, scale):
    """lhs <= rhs, raising Ambiguous where float noise could flip it."""
    if abs(lhs - rhs) <= REL * (abs(scale) + abs(lhs) + abs(rhs)):
        raise Ambiguous
    return lhs <= rhs


def reference_apply(tables, requests, engine_outcomes):
    """Outcomes [(accepted, reason, amount)] and final (accounts, positions) rows."""
    accounts = [dict(r, balance=money(r["balance"]), asset=r.get("asset") or "USDT") for r in rows(tables["accounts"])]
    positions = [dict(r, position_side=r.get("position_side") or "both",
                      isolated_margin=money(r.get("isolated_margin") or 0)) for r in rows(tables["positions"])]
    inst = {r["symbol"]: r for r in rows(tables["instruments"])}
    settle = {s: r.get("settle_asset") or "USDT" for s, r in inst.items()}
    tiers = tiers_by_symbol(tables["risk_tiers"])
    orders = rows(tables["orders"])
    outcomes = []
    for req, engine in zip(rows(requests), engine_outcomes):
        try:
            out = _one(req, accounts, positions, inst, settle, tiers, orders, tables, engine)
        except Ambiguous:
            out = engine
            if engine[0]:
                _commit(req, engine[2], accounts, positions, settle)
        outcomes.append(out)
    return outcomes, accounts, positions


def _commit(req, amount, accounts, positions, settle):
    """Re-apply an accepted request's money movement (used when adopting the engine's call)."""
    op = req["op"]
    if op in ("transfer_in", "transfer_out"):
        w = next(a for a in accounts if (a["account_id"], a["asset"]) == (req["account_id"], req.get("asset") or "USDT"))
        w["balance"] += amount if op == "transfer_in" else -amount
        return
    w = next(a for a in accounts if (a["account_id"], a["asset"]) == (req["account_id"], settle[req["symbol"]]))
    legs = [p for p in positions if p["account_id"] == req["account_id"] and p["symbol"] == req["symbol"]]
    leg = next((p for p in legs if p["position_side"] == (req.get("position_side") or "both")), None)
    if op in ("add_margin", "set_leverage"):
        w["balance"] -= amount
        leg["isolated_margin"] += amount
        if op == "set_leverage":
            leg["leverage"] = req["value"]
    elif op == "remove_margin":
        w["balance"] += amount
        leg["isolated_margin"] -= amount
    elif op == "set_margin_mode":
        for p in legs:
            w["balance"] += p["isolated_margin"] if req["mode"] == "cross" else 0
            p["isolated_margin"] = D(0) if req["mode"] == "cross" else p["isolated_margin"]
            p["margin_mode"] = req["mode"]


def _one(req, accounts, positions, inst, settle, tiers, orders, tables, engine):
    op, value = req["op"], req.get("value")
    if op not in ("add_margin", "remove_margin", "set_leverage", "set_margin_mode", "transfer_in", "transfer_out"):
        return False, "unknown_op", D(0)
    transfer = op.startswith("transfer")
    if not transfer and req.get("symbol") not in inst:
        return False, "unknown_symbol", D(0)
    asset = (req.get("asset") or "USDT") if transfer else settle[req["symbol"]]
    wallet = next((a for a in accounts if (a["account_id"], a["asset"]) == (req["account_id"], asset)), None)
    if wallet is None:
        return False, "unknown_account", D(0)
    if op == "set_margin_mode":
        if req.get("mode") not in ("cross", "isolated"):
            return False, "bad_value", D(0)
    elif value is None or value != value or value in (float("inf"), float("-inf")) or value <= 0:
        return False, "bad_value", D(0)
    elif op == "set_leverage" and value < 1:
        return False, "bad_value", D(0)
    amount = money(value) if op not in ("set_leverage", "set_margin_mode") else D(0)
    if op not in ("set_leverage", "set_margin_mode") and amount <= 0:
        return False, "bad_value", D(0)
    legs = [p for p in positions if p["account_id"] == req["account_id"] and p.get("symbol") == req.get("symbol")]
    leg = next((p for p in legs if p["position_side"] == (req.get("position_side") or "both")), None)
    if not transfer and (leg is None if op != "set_margin_mode" else not legs):
        return False, "unknown_position", D(0)

    pos_fig, acc_fig = reference_scan(tables["instruments"], tables["risk_tiers"], accounts, positions,
                                      tables["orders"], tables["marks"])
    acc = acc_fig[(req["account_id"], asset)]
    fig = pos_fig[(leg["account_id"], leg["symbol"], leg["position_side"])] if leg is not None else None
    if op == "transfer_in":
        wallet["balance"] += amount
        return True, None, amount
    if op == "transfer_out":
        if not decide(amount, acc["transferable"], acc["scale"]):
            return False, "insufficient_transferable", D(0)
        wallet["balance"] -= amount
        return True, None, amount
    if op == "add_margin":
        if leg["margin_mode"] != "isolated":
            return False, "not_isolated", D(0)
        if leg["qty"] == 0:
            return False, "flat_position", D(0)
        if not decide(amount, acc["available_balance"], acc["scale"]):
            return False, "insufficient_available", D(0)
        wallet["balance"] -= amount
        leg["isolated_margin"] += amount
        return True, None, amount
    if op == "remove_margin":
        if leg["margin_mode"] != "isolated":
            return False, "not_isolated", D(0)
        if amount > leg["isolated_margin"]:
            return False, "insufficient_margin", D(0)
        after = leg["isolated_margin"] - amount + fig["upnl"] - fig["fee"]
        if leg["qty"] != 0 and decide(after, fig["mm"], fig["notional"]):
            return False, "would_liquidate", D(0)
        wallet["balance"] += amount
        leg["isolated_margin"] -= amount
        return True, None, amount
    if op == "set_leverage":
        lev = D(value)
        caps = [t[3] for t in tiers.get(leg["symbol"], []) if t[0] <= fig["notional"]]
        if caps and lev > caps[-1]:
            return False, "leverage_above_tier_max", D(0)
        new_im = fig["notional"] / lev
        moved = D(0)
        if leg["margin_mode"] == "isolated":
            have = leg["isolated_margin"] + fig["upnl"]
            if lev < D(leg["leverage"]) and have < new_im:
                moved = ((new_im - have) / UNIT).to_integral_value(rounding=ROUND_CEILING) * UNIT
                if engine[0] and abs(moved - engine[2]) <= UNIT:  # float ceil at a unit boundary
                    moved = engine[2]
                if not decide(moved, acc["available_balance"], acc["scale"]):
                    return False, "insufficient_available", D(0)
                wallet["balance"] -= moved
                leg["isolated_margin"] += moved
        elif lev < D(leg["leverage"]):
            raw = acc["equity"] - (acc["cross_im"] - fig["im"] + new_im) - acc["order_margin"]
            if decide(raw, D(0), acc["scale"]) and raw != 0:
                return False, "insufficient_available", D(0)
        leg["leverage"] = value
        return True, None, moved
    # set_margin_mode
    if any(p["qty"] != 0 for p in legs):
        return False, "open_position", D(0)
    if any(o["account_id"] == req["account_id"] and o["symbol"] == req["symbol"] for o in orders):
        return False, "open_orders", D(0)
    moved = D(0)
    for p in legs:
        if p["margin_mode"] == "isolated" and req["mode"] == "cross":
            moved += p["isolated_margin"]
            wallet["balance"] += p["isolated_margin"]
            p["isolated_margin"] = D(0)
        p["margin_mode"] = req["mode"]
    return True, None, moved
