"""Stress scenarios (docs/model.md §12, `riskcore.stress`, `riskcore report`): the book's marks
shocked, and what the engine's own liquidation does at those marks — forced closes,
liquidation fees, the insurance fund, auto-deleveraging — on a copy of the book per scenario.

A scenario is a factor per symbol (shocked mark = mark × factor). The ladder: the marks as
they are (`base`), every mark moved by −50 % … +50 % in 5 % steps (`all-50%` … `all+50%`),
each of the largest coins alone (its linear and inverse contracts together) down and up,
and a market crash in which each coin moves by its beta times the market's log return.
Amounts are converted to one quote currency at the scenario's marks (`asset_prices`).
"""

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import polars as pl

from .book import Book
from .io import as_book, as_table
from .money import realized_units

UNIFORM_STEPS = tuple(range(-50, 0, 5)) + tuple(range(5, 55, 5))   # percent
COIN_SHOCK = 20        # percent: each of the largest coins alone, down and up
MARKET_SHOCK = -20     # percent: BTC's move in the market scenario; others move beta times it (in log)
# Crash betas to BTC: majors fall more than BTC, thin coins more still (what desks see on bad days).
MARKET_BETA = {"BTC": 1.0, "ETH": 1.2, "BNB": 1.0, "TRX": 0.8}
MAJOR_BETA, ALT_BETA = 1.3, 1.5
MAJORS = ("SOL", "XRP", "DOGE", "ADA", "AVAX", "LINK", "DOT", "TON", "LTC", "BCH", "NEAR", "APT", "ARB", "OP",
          "SUI", "PEPE")


def coin_name(symbol: str, inverse: bool, settle_asset: str) -> str:
    """The coin a contract is priced on: an inverse contract's settle asset (BTCUSD → BTC), a
    linear one's symbol less its settle asset (BTCUSDT → BTC), else the symbol itself."""
    if inverse:
        return settle_asset
    return symbol[: -len(settle_asset)] if symbol.endswith(settle_asset) and symbol != settle_asset else symbol


@dataclass
class Scenario:
    name: str            # e.g. "all-10%", "BTC-20%", "market-20%"
    kind: str            # base, uniform, coin, market
    factor: np.ndarray   # per symbol: shocked mark = mark × factor


def symbol_coins(book: Book) -> list[str]:
    inst = book.instruments
    return [coin_name(s, bool(inv), book.assets[a]) for s, inv, a in zip(inst.symbol, inst.inverse, inst.settle_asset)]


def quote_asset(book: Book) -> str:
    """The currency every amount of a report is converted to: USDT when the book has it, else
    the settle asset of most linear contracts (else of most contracts)."""
    if "USDT" in book.assets:
        return "USDT"
    inst = book.instruments
    settle = inst.settle_asset[~inst.inverse] if (~inst.inverse).any() else inst.settle_asset
    return book.assets[int(np.bincount(settle).argmax())] if len(settle) else "USDT"


def asset_prices(book: Book, mark: np.ndarray, quote: str | None = None) -> np.ndarray:
    """Price of one unit of each asset in the quote currency at `mark`: 1 for the quote; for
    a coin, the mark of its linear contract in the quote (BTCUSDT), else of an inverse
    contract settled in it (BTCUSD, quoted in USD ≈ the quote); NaN when the book prices it nowhere."""
    quote = quote or quote_asset(book)
    inst = book.instruments
    price = np.full(len(book.assets), np.nan)
    for s, (name, inv, a) in enumerate(zip(inst.symbol, inst.inverse, inst.settle_asset)):
        coin = coin_name(name, bool(inv), book.assets[a])
        if not np.isfinite(mark[s]):
            continue
        if not inv and book.assets[a] == quote and coin in book.assets:
            price[book.assets.index(coin)] = mark[s]               # a linear contract in the quote wins
        elif inv and np.isnan(price[a]):
            price[a] = mark[s]
    if quote in book.assets:
        price[book.assets.index(quote)] = 1.0
    return price


def open_interest(book: Book, mark: np.ndarray, quote: str | None = None) -> np.ndarray:
    """Gross notional per symbol in the quote currency (longs and shorts)."""
    pos, inst = book.positions, book.instruments
    face_mark, _ = book.face_mark(mark)
    notional = np.abs(pos.qty) * face_mark[pos.symbol]
    per_symbol = np.bincount(pos.symbol, weights=notional, minlength=len(inst))
    return per_symbol * asset_prices(book, mark, quote)[inst.settle_asset]


def scenarios(book: Book, mark: np.ndarray | None = None, *, coins: int = 3, betas: dict | None = None) -> list[Scenario]:
    """The stress ladder for a book: base, the uniform shocks, the `coins` largest coins by
    open interest alone (−COIN_SHOCK % and +COIN_SHOCK %), and the market scenario with
    `betas` per coin (default MARKET_BETA, then MAJOR_BETA for majors and ALT_BETA)."""
    mark = book.mark if mark is None else mark
    n = len(book.instruments)
    out = [Scenario("base", "base", np.ones(n))]
    out += [Scenario(f"all{p:+d}%", "uniform", np.full(n, 1 + p / 100)) for p in UNIFORM_STEPS]
    coin = np.array(symbol_coins(book), dtype=object)
    oi = open_interest(book, mark)
    names = sorted(set(coin.tolist()))
    by_coin = np.array([np.nansum(oi[coin == c]) for c in names])
    for c in [names[k] for k in np.argsort(-by_coin, kind="stable")[:coins] if by_coin[k] > 0]:
        for p in (-COIN_SHOCK, COIN_SHOCK):
            out.append(Scenario(f"{c}{p:+d}%", "coin", np.where(coin == c, 1 + p / 100, 1.0)))
    beta = np.array([coin_beta(c, betas) for c in coin])
    out.append(Scenario(f"market{MARKET_SHOCK:+d}%", "market", np.exp(beta * np.log1p(MARKET_SHOCK / 100))))
    return out


def coin_beta(coin: str, betas: dict | None = None) -> float:
    if betas and coin in betas:
        return float(betas[coin])
    return MARKET_BETA.get(coin, MAJOR_BETA if coin in MAJORS else ALT_BETA)


@dataclass
class StressResult:
    """`scenarios`: one row per scenario (columns: SCENARIO_COLUMNS; amounts in `quote`);
    `deficits`: per scenario and wallet with a deficit at bankruptcy, its size (asset and
    quote); `quote`: the currency of the amounts."""
    scenarios: pl.DataFrame
    deficits: pl.DataFrame
    quote: str


SCENARIO_SCHEMA = {"scenario": pl.String, "kind": pl.String, "wallets_liquidated": pl.Int64,
                   "isolated_liquidated": pl.Int64, "positions_closed": pl.Int64, "notional_liquidated": pl.Float64,
                   "deficit": pl.Float64, "fund_fees": pl.Float64, "fund_used": pl.Float64,
                   "fund_shortfall": pl.Float64, "adl_positions": pl.Int64, "adl_notional": pl.Float64,
                   "seconds": pl.Float64}
SCENARIO_COLUMNS = tuple(SCENARIO_SCHEMA)


def stress(book, marks=None, *, insurance_fund=None, ladder: list[Scenario] | None = None, coins: int = 3, betas: dict | None = None,
           progress: Callable[[str], None] | None = None) -> StressResult:
    """Run every scenario through the engine's liquidation (riskcore.Engine with
    liquidate=True at the shocked marks, on its own copy of the book) and tabulate what it
    did: wallets and isolated positions liquidated, notional liquidated, the deficit at
    bankruptcy, what the insurance fund took in fees, paid and could not pay, and the
    auto-deleveraged positions and notional. `book` is a Book or a folder; `marks` replaces
    the book's marks; `insurance_fund` (asset, balance; default empty) is where every
    scenario starts. `ladder` overrides the ladder (a list of Scenario); `progress` is
    called with each scenario's name before it runs."""
    from .engine import Engine
    book = as_book(book)
    marks, marks_name = as_table(marks, "marks")
    base = book.mark if marks is None else book.read_marks(marks, marks_name)[0]
    book.check_marks(base, None if marks is None else marks_name)
    fund, fund_name = as_table(insurance_fund, "insurance_fund")
    ladder = scenarios(book, base, coins=coins, betas=betas) if ladder is None else ladder
    quote = quote_asset(book)
    known = np.flatnonzero(np.isfinite(base))
    rows, deficits = [], []
    for sc in ladder:
        if progress:
            progress(sc.name)
        mark = base * sc.factor
        t = time.perf_counter()
        engine = Engine(book, pl.DataFrame({"symbol": [book.instruments.symbol[s] for s in known],
                                            "mark_price": mark[known]}),
                        liquidate=True, insurance_fund=fund, fund_name=fund_name)
        seconds = time.perf_counter() - t
        price = asset_prices(book, mark, quote)
        ev = engine.events()
        closing = ev["kind"].cast(pl.String).is_in(["liquidation_close", "adl_close", "insurance_fund_shortfall"])
        ev, event_row = ev.filter(closing), engine.event_rows()[closing.to_numpy()]
        if ev.height:
            pos, inst = book.positions, book.instruments
            sym = pos.symbol[event_row]
            q, at = np.abs(ev["qty"].to_numpy()), ev["price"].to_numpy()
            face, inverse, entry = inst.face_value[sym], inst.inverse[sym], pos.entry_price[event_row]
            to_quote = price[inst.settle_asset[sym]]
            notional = np.where(inverse, q * face / mark[sym], q * face * mark[sym]) * to_quote
            realized = ev["realized_pnl"].cast(pl.Float64).to_numpy()
            fund_delta = ev["insurance_fund_delta"].cast(pl.Float64).to_numpy()
            kind = ev["kind"].cast(pl.String).to_numpy()
            liq, adl = kind == "liquidation_close", kind == "adl_close"
            # a close against ADL is at the bankruptcy price: what it realizes beyond the
            # close at the mark is its share of the deficit; a close at the mark with the
            # fund paying has the deficit as the fund's payment
            bankrupt = liq & (at != mark[sym])
            adl_share = np.zeros(ev.height)
            if bankrupt.any():  # the close at the mark, in units as the engine rounds it
                k = np.flatnonzero(bankrupt)
                scale = book.asset_scale[inst.settle_asset[sym[k]]]
                at_mark = realized_units(-ev["qty"].to_numpy()[k], entry[k], face[k], inverse[k], mark[sym[k]], scale)
                adl_share[k] = np.maximum(realized[k] - at_mark * 10.0 ** -scale, 0.0)
            fund_paid = np.where(fund_delta < 0, -fund_delta, 0.0)
            deficit = (np.where(liq, fund_paid, 0.0) + adl_share) * to_quote
            per_wallet = (pl.DataFrame({"account_id": ev["account_id"], "asset": ev["asset"].cast(pl.String),
                                        "deficit_asset": deficit / to_quote, "deficit": deficit})
                          .filter(pl.col("deficit") > 0).group_by("account_id", "asset").sum()
                          .with_columns(scenario=pl.lit(sc.name)))
            deficits.append(per_wallet)
            iso = pos.isolated[event_row]
            row = dict(wallets_liquidated=int(np.unique(pos.wallet[event_row[liq & ~iso]]).size),
                       isolated_liquidated=int((liq & iso).sum()), positions_closed=int(liq.sum()),
                       notional_liquidated=float(np.nansum(notional[liq])), deficit=float(np.nansum(deficit)),
                       fund_fees=float(np.nansum((np.where(fund_delta > 0, fund_delta, 0.0) * to_quote))),
                       fund_used=float(np.nansum((fund_paid * to_quote))),
                       adl_positions=int(adl.sum()), adl_notional=float(np.nansum(notional[adl])))
        else:
            row = dict(wallets_liquidated=0, isolated_liquidated=0, positions_closed=0, notional_liquidated=0.0,
                       deficit=0.0, fund_fees=0.0, fund_used=0.0, adl_positions=0, adl_notional=0.0)
        end = engine.insurance_fund()["balance"].cast(pl.Float64).to_numpy()
        row["fund_shortfall"] = float(np.nansum(np.maximum(-end, 0.0) * price))
        rows.append(dict(scenario=sc.name, kind=sc.kind, **row, seconds=seconds))
        del engine, ev  # one scenario's copy of the book in memory at a time
    table = pl.DataFrame(rows, schema=SCENARIO_SCHEMA, orient="row") if rows else pl.DataFrame(schema=SCENARIO_SCHEMA)
    schema = {"account_id": pl.Int64, "asset": pl.String, "deficit_asset": pl.Float64, "deficit": pl.Float64,
              "scenario": pl.String}
    per_wallet = pl.concat([pl.DataFrame(schema=schema)] + [d.cast(schema) for d in deficits], how="vertical_relaxed")
    return StressResult(table, per_wallet.select("scenario", "account_id", "asset", "deficit_asset", "deficit"), quote)
