"""Books for the tests: the one helper module test files share (besides the naive/ references).

- good(): a small valid hand-written book (docs/model.md §2) as polars tables
- with_value(): that book with one cell changed, for the book-rule tests
- representable(): whether a book's money stays inside 64-bit units after a 4x move
- books(), tier_tables(): Hypothesis strategies, random books with every feature of
  docs/model.md §2 and its edge cases
- tick_paths(): a random book with a path of mark moves (crashes, jumps) and a fund
"""

import polars as pl
from hypothesis import strategies as st

def good():
    """Three instruments (linear, inverse, a null settle_asset), tiers, two accounts with a coin
    wallet, four positions (cross, isolated, hedge legs), one order, marks."""
    return dict(
        instruments=pl.DataFrame({"symbol": ["BTCUSDT", "BTCUSD", "ETHUSDT"],
                                  "contract_type": ["linear", "inverse", "linear"],
                                  "settle_asset": ["USDT", "BTC", None], "face_value": [1.0, 100.0, 1.0],
                                  "taker_fee_rate": [0.0004, 0.0005, 0.0004]}),
        risk_tiers=pl.DataFrame({"symbol": ["BTCUSDT", "BTCUSDT", "BTCUSD", "ETHUSDT"],
                                 "notional_floor": [0.0, 5e4, 0.0, 0.0], "mmr": [0.004, 0.005, 0.01, 0.005],
                                 "max_leverage": [125.0, 100.0, 50.0, 100.0]}),
        accounts=pl.DataFrame({"account_id": [1, 1, 2], "asset": ["USDT", "BTC", "USDT"],
                               "balance": [1000.0, 0.5, 50.0]}),
        positions=pl.DataFrame({"account_id": [1, 1, 2, 2], "symbol": ["BTCUSDT", "BTCUSD", "ETHUSDT", "ETHUSDT"],
                                "position_side": ["both", "both", "long", "short"],
                                "qty": [0.1, -5.0, 1.0, -2.0], "entry_price": [60000.0, 61000.0, 3000.0, 3100.0],
                                "margin_mode": ["cross", "isolated", "cross", "cross"],
                                "leverage": [10.0, 20.0, 5.0, 5.0], "isolated_margin": [0.0, 0.01, 0.0, 0.0]}),
        orders=pl.DataFrame({"account_id": [1], "symbol": ["BTCUSDT"], "qty": [0.05], "price": [59000.0],
                             "leverage": [10.0], "margin_mode": ["cross"]}),
        marks=pl.DataFrame({"symbol": ["BTCUSDT", "BTCUSD", "ETHUSDT"], "mark_price": [60500.0, 60500.0, 3050.0]}),
    )


def with_value(tables, table, column, row, value):
    """tables with tables[table][column][row] set to value (changed in place and returned)."""
    df = tables[table]
    tables[table] = df.with_columns(
        pl.when(pl.int_range(pl.len()) == row).then(pl.lit(value)).otherwise(pl.col(column)).alias(column))
    return tables


def representable(tables) -> bool:
    """Every position's value stays inside 64-bit fixed-point money after a 4x move."""
    t = tables["positions"].join(tables["instruments"], on="symbol").join(tables["marks"], on="symbol")
    linear = (t["qty"].abs() * t["face_value"] * (t["mark_price"] + t["entry_price"])).max() or 0
    inverse = (t["qty"].abs() * t["face_value"] * (1 / t["mark_price"] + 1 / t["entry_price"])).max() or 0
    return 8 * max(linear, inverse) < 5e10


# -- Hypothesis strategies -----------------------------------------------------------------

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


@st.composite
def tick_paths(draw, max_symbols: int = 3, most_moved: int | None = None, ticks=(1, 8)):
    """(tables, path, fund): a random book, a path of ticks — each [(symbols, relative moves)]
    moving at most `most_moved` symbols, with crashes and jumps but every mark within 4x of its
    start (where `representable` keeps money inside 64 bits) — and an insurance fund per asset."""
    tables = draw(books(max_symbols=max_symbols, max_accounts=4).filter(representable))
    symbols = tables["instruments"]["symbol"].to_list()
    path, level = [], dict.fromkeys(symbols, 1.0)
    for _ in range(draw(st.integers(*ticks))):
        chosen = draw(st.lists(st.sampled_from(symbols), min_size=1, max_size=most_moved, unique=True))
        moves = [draw(st.sampled_from([0.5, 0.8, 0.97, 0.999, 1.0, 1.001, 1.03, 1.25, 2.0])) for _ in chosen]
        moves = [m if 0.25 <= level[s] * m <= 4 else 1.0 for s, m in zip(chosen, moves)]
        for s, m in zip(chosen, moves):
            level[s] *= m
        path.append((chosen, moves))
    return tables, path, draw(st.sampled_from([0.0, 0.0, 1.0, 1e9]))
