"""Hypothesis strategies: random books with every feature of docs/model.md §2 and its edge cases."""

import polars as pl
from hypothesis import strategies as st

PRICES = st.sampled_from([0.00012345, 0.0586, 1.0, 2.5, 31.7, 1456.84, 31967.27, 60000.0])
FACES = st.sampled_from([1.0, 0.001, 10.0, 100.0])


@st.composite
def tier_tables(draw, symbol: str, derived_only: bool = False):
    n = draw(st.integers(1, 5))
    floors = [0.0] + sorted(draw(st.sets(st.sampled_from([10.0, 1e3, 5e4, 1e5, 2.5e5, 1e6, 5e6, 2e7]),
                                          min_size=n - 1, max_size=n - 1)))
    mmrs = sorted(draw(st.lists(st.sampled_from([0.0, 0.004, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5]),
                                min_size=n, max_size=n)))
    given = None if derived_only else draw(st.sampled_from([None, "tier0", "all"]))
    rows = []
    for i, (floor, mmr) in enumerate(zip(floors, mmrs)):
        amount = None
        if given == "all" or (given == "tier0" and i == 0):
            amount = draw(st.sampled_from([0.0, 16300.0, 135365.0, 2.5]))
        rows.append(dict(symbol=symbol, notional_floor=floor, mmr=mmr,
                         max_leverage=max(1.0, float(int(0.5 / mmr))) if mmr else 125.0,
                         maintenance_amount=amount))
    return rows


@st.composite
def books(draw, max_symbols: int = 4, max_accounts: int = 5, derived_only: bool = False):
    """A dict of polars tables: instruments, risk_tiers, accounts, positions, orders, marks."""
    n_sym = draw(st.integers(1, max_symbols))
    inst, tiers, marks = [], [], []
    for k in range(n_sym):
        inverse = draw(st.booleans())
        sym = f"S{k}" + ("USD" if inverse else "USDT")
        frac = draw(st.sampled_from([None, None, None, 0.5, 1.0]))
        inst.append(dict(symbol=sym, contract_type="inverse" if inverse else "linear",
                         settle_asset=draw(st.sampled_from(["BTC", "ETH"])) if inverse else "USDT",
                         face_value=draw(FACES), taker_fee_rate=draw(st.sampled_from([0.0, 0.0004, 0.0005])),
                         mm_im_fraction=frac))
        if frac is None or draw(st.booleans()):
            tiers += draw(tier_tables(sym, derived_only))
        marks.append(dict(symbol=sym, mark_price=draw(PRICES)))
    settle = {i["symbol"]: i["settle_asset"] for i in inst}

    n_acc = draw(st.integers(1, max_accounts))
    account_ids = draw(st.lists(st.integers(-2**40, 2**40), min_size=n_acc, max_size=n_acc, unique=True))
    positions, orders = [], []
    for acct in account_ids:
        for sym in draw(st.lists(st.sampled_from([i["symbol"] for i in inst]), unique=True, max_size=n_sym)):
            mode = draw(st.sampled_from(["cross", "isolated"]))
            sides = draw(st.sampled_from([["both"], ["long"], ["short"], ["long", "short"]]))
            for side in sides:
                size = draw(st.sampled_from([0.0, 0.001, 0.37, 1.0, 109.488, 3683.979, 25000.0, 1e6]))
                sign = {"long": 1, "short": -1}.get(side) or draw(st.sampled_from([1, -1]))
                entry = draw(PRICES) * draw(st.sampled_from([0.5, 0.9, 1.0, 1.01, 2.0]))
                positions.append(dict(
                    account_id=acct, symbol=sym, position_side=side, qty=sign * size, entry_price=entry,
                    margin_mode=mode, leverage=draw(st.sampled_from([1.0, 2.0, 10.0, 20.0, 125.0])),
                    isolated_margin=draw(st.sampled_from([0.0, 0.01, 5.0, 1234.5678, 1e6])) if mode == "isolated" else 0.0))
            if draw(st.booleans()):
                orders.append(dict(account_id=acct, symbol=sym, qty=draw(st.sampled_from([-2.0, 0.5, 10.0])),
                                   price=draw(PRICES), leverage=draw(st.sampled_from([1.0, 20.0])), margin_mode=mode))
    wallets = {(a, "USDT") for a in account_ids} | {(p["account_id"], settle[p["symbol"]]) for p in positions} \
        | {(o["account_id"], settle[o["symbol"]]) for o in orders}
    accounts = [dict(account_id=a, asset=asset,
                     balance=draw(st.sampled_from([0.0, -3.5, 0.00000001, 100.0, 1535443.01, 2.5e7])))
                for a, asset in sorted(wallets)]

    def frame(rows, schema):
        return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)

    return dict(
        instruments=frame(inst, dict(symbol=pl.String, contract_type=pl.String, settle_asset=pl.String,
                                     face_value=pl.Float64, taker_fee_rate=pl.Float64, mm_im_fraction=pl.Float64)),
        risk_tiers=frame(tiers, dict(symbol=pl.String, notional_floor=pl.Float64, mmr=pl.Float64,
                                     max_leverage=pl.Float64, maintenance_amount=pl.Float64)),
        accounts=frame(accounts, dict(account_id=pl.Int64, asset=pl.String, balance=pl.Float64)),
        positions=frame(positions, dict(account_id=pl.Int64, symbol=pl.String, position_side=pl.String,
                                        qty=pl.Float64, entry_price=pl.Float64, margin_mode=pl.String,
                                        leverage=pl.Float64, isolated_margin=pl.Float64)),
        orders=frame(orders, dict(account_id=pl.Int64, symbol=pl.String, qty=pl.Float64, price=pl.Float64,
                                  leverage=pl.Float64, margin_mode=pl.String)),
        marks=frame(marks, dict(symbol=pl.String, mark_price=pl.Float64)),
    )
