"""A realistic synthetic book (docs/model.md §10, `riskcore gen`), deterministic for a seed.

Zipf-like symbol popularity, heavy-tailed position sizes, 1–50 positions per account,
~20% isolated, ~5% hedge-mode accounts, a few inverse (coin-settled) contracts, Binance-like
tier tables, resting orders, and balances drawn so that a small share of accounts and
isolated positions sit at or past their maintenance margin.
"""

import math

import numpy as np
import polars as pl

from .book import Book
from .errors import BookError
from .keys import position_key
from .scan import ScanArrays, scan_into

MAJORS = {"BTC": 60000.0, "ETH": 3000.0, "SOL": 150.0, "BNB": 600.0, "XRP": 0.6, "DOGE": 0.15,
          "ADA": 0.45, "AVAX": 30.0, "LINK": 15.0, "DOT": 6.0, "TRX": 0.12, "TON": 5.5, "LTC": 80.0,
          "BCH": 400.0, "NEAR": 5.0, "APT": 9.0, "ARB": 0.9, "OP": 2.0, "SUI": 1.5, "PEPE": 0.00001}
TIER_FLOORS_USD = np.array([0, 5e4, 2.5e5, 1e6, 2.5e6, 5e6, 1e7, 2.5e7, 5e7, 1e8])
TIER_MMR = np.array([0.004, 0.005, 0.0065, 0.01, 0.02, 0.05, 0.1, 0.125, 0.15, 0.25])
LEVERAGES = np.array([1, 2, 3, 5, 10, 20, 25, 50, 75, 100, 125], dtype=float)
LEVERAGE_WEIGHTS = np.array([4, 6, 6, 14, 22, 20, 8, 10, 4, 4, 2], dtype=float)
MAX_POSITIONS_PER_ACCOUNT = 50
ISOLATED_SHARE, HEDGE_SHARE, FLAT_SHARE, INVERSE_SHARE = 0.20, 0.05, 0.02, 0.05


def _instruments(rng, n_symbols: int, n_tiers: int):
    n_inverse = max(1, round(n_symbols * INVERSE_SHARE)) if n_symbols > 1 else 0
    n_linear = n_symbols - n_inverse
    bases = list(MAJORS) + [f"C{i:04d}" for i in range(max(0, n_linear - len(MAJORS)))]
    price = np.array([MAJORS.get(b, 0.0) for b in bases[:n_linear]])
    small = price == 0
    price[small] = np.exp(rng.uniform(np.log(1e-3), np.log(500.0), small.sum()))
    price = _round_sig(price, 6)
    popularity = 1.0 / np.arange(1, n_linear + 1) ** 1.1
    # coin-settled contracts only on coins worth >= 1 USD, as exchanges list them
    eligible = np.flatnonzero(price >= 1.0) if np.any(price >= 1.0) else np.arange(1)
    inv = eligible[np.arange(n_inverse) % len(eligible)]
    symbols = [f"{b}USDT" for b in bases[:n_linear]] + [
        f"{bases[i]}USD" + ("" if k < len(eligible) else f"_{k // len(eligible)}") for k, i in enumerate(inv)]
    inverse = np.r_[np.zeros(n_linear, bool), np.ones(n_inverse, bool)]
    price = np.r_[price, price[inv]]
    popularity = np.r_[popularity, 0.3 * popularity[inv]]
    settle = ["USDT"] * n_linear + [bases[i] for i in inv]
    face = np.where(inverse, np.where(price > 1000, 100.0, 10.0), 1.0)
    frac = np.full(n_symbols, np.nan)
    frac[(~inverse) & (rng.random(n_symbols) < 0.02)] = 0.5
    instruments = pl.DataFrame({
        "symbol": symbols, "contract_type": np.where(inverse, "inverse", "linear"), "settle_asset": settle,
        "face_value": face, "taker_fee_rate": np.where(popularity > 0.05, 0.0004, 0.0005),
        "liquidation_fee_rate": np.where(popularity > 0.05, 0.005, 0.0125),
        "mm_im_fraction": pl.Series(frac, nan_to_null=True)})
    # Tier brackets shrink and rates rise for thin markets; inverse floors are in coin.
    depth = np.clip(popularity / popularity.max(), 0.01, 1.0)
    mult = np.clip(1.0 / np.sqrt(depth), 1.0, 2.5)
    k = np.arange(n_tiers)
    floors_usd = TIER_FLOORS_USD[k][None, :] * depth[:, None]
    mmr = np.minimum(TIER_MMR[k][None, :] * mult[:, None], 0.5)
    floor = np.where(inverse[:, None], floors_usd / price[:, None], floors_usd)
    risk_tiers = pl.DataFrame({
        "symbol": np.repeat(symbols, n_tiers), "notional_floor": np.round(floor, 2).ravel(),
        "mmr": np.round(mmr, 6).ravel(), "max_leverage": np.maximum(1.0, np.floor(0.5 / mmr)).ravel()})
    return instruments, risk_tiers, price, popularity / popularity.sum(), inverse, face, floors_usd, mmr


def _positions_per_account(rng, n_accounts: int, n_positions: int, cap: int) -> np.ndarray:
    weights = rng.pareto(1.5, n_accounts) + 0.05
    extra = np.minimum(np.floor(weights / weights.sum() * (n_positions - n_accounts)), cap - 1).astype(np.int64)
    while (left := n_positions - n_accounts - extra.sum()) > 0:
        room = np.flatnonzero(extra < cap - 1)
        extra[rng.choice(room, min(left, len(room)), replace=False)] += 1
    return 1 + extra


def _unique_symbols(rng, acct, hedge_side, popularity):
    """Draw a symbol per row with no repeated (account, symbol, side): popularity-weighted
    draws, uniform redraws of collisions, and the last few collisions given an unused symbol."""
    n_sym = len(popularity)
    sym = rng.choice(n_sym, len(acct), p=popularity)
    for round_ in range(60):
        key = position_key(acct, sym, hedge_side, n_sym)
        order = np.argsort(key, kind="stable")
        dup = order[1:][key[order][1:] == key[order][:-1]]
        if not len(dup):
            return sym
        if round_ < 50:
            sym[dup] = rng.integers(0, n_sym, len(dup))
            continue
        for i in dup:  # rare: accounts holding nearly every symbol (rows are grouped by account)
            lo, hi = np.searchsorted(acct, [acct[i], acct[i] + 1])
            free = np.setdiff1d(np.arange(n_sym), sym[lo:hi][hedge_side[lo:hi] == hedge_side[i]])
            if not len(free):
                raise BookError("gen", None, "more positions per account than symbols")
            sym[i] = rng.choice(free)
    raise BookError("gen", None, "could not draw distinct symbols per account")


def generate(accounts: int = 100_000, positions: int = 1_000_000, symbols: int = 200, seed: int = 0,
             tiers: int = 10) -> dict[str, pl.DataFrame]:
    """The tables of a synthetic book (instruments, risk_tiers, accounts, positions, orders, marks)."""
    cap = min(MAX_POSITIONS_PER_ACCOUNT, symbols)
    if not (1 <= accounts <= positions <= accounts * cap):
        raise BookError("gen", None, f"need accounts <= positions <= accounts * {cap}")
    if not 1 <= tiers <= len(TIER_FLOORS_USD):
        raise BookError("gen", None, f"tiers must be 1..{len(TIER_FLOORS_USD)}")
    rng = np.random.default_rng(seed)
    instruments, risk_tiers, price, popularity, inverse, face, floors_usd, mmr = _instruments(rng, symbols, tiers)
    settle = instruments["settle_asset"].to_numpy()

    counts = _positions_per_account(rng, accounts, positions, cap)
    acct = np.repeat(np.arange(accounts), counts)
    hedge_acct = rng.random(accounts) < HEDGE_SHARE
    hedge = hedge_acct[acct]
    side = np.where(hedge, 1 + (rng.random(positions) < 0.5), 0).astype(np.int8)
    sym = _unique_symbols(rng, acct, side, popularity)
    # one margin mode per (account, symbol): a hash of the pair, so hedge legs and orders agree
    mixed = (acct.astype(np.uint64) * np.uint64(2654435761) + sym.astype(np.uint64) * np.uint64(40503)
             + np.uint64(seed)) % np.uint64(1000)
    isolated = mixed < np.uint64(ISOLATED_SHARE * 1000)

    # Rows in book order (account, settle asset, symbol name, side), so the book built below
    # lines up with these arrays row for row.
    names = np.array(instruments["symbol"].to_list())
    name_rank = np.argsort(np.argsort(names))
    asset_rank = np.unique(settle, return_inverse=True)[1]
    order = np.lexsort((side, name_rank[sym], asset_rank[sym], acct))
    acct, side, sym, isolated = acct[order], side[order], sym[order], isolated[order]

    notional_usd = np.exp(rng.normal(7.5, 1.8, positions)).clip(5.0, 0.5 * floors_usd[sym, -1] + 1e6)
    mark = price[sym]
    contracts = np.where(inverse[sym], np.maximum(1.0, np.round(notional_usd / face[sym])),
                         _round_sig(notional_usd / (mark * face[sym])))
    sign = np.where(side == 1, 1.0, np.where(side == 2, -1.0, np.where(rng.random(positions) < 0.55, 1.0, -1.0)))
    qty = np.where(rng.random(positions) < FLAT_SHARE, 0.0, sign * contracts)
    entry = _round_sig(mark * np.exp(rng.normal(0.0, 0.04, positions)))
    tier = np.clip(np.searchsorted(TIER_FLOORS_USD[:tiers], notional_usd, side="right") - 1, 0, tiers - 1)
    max_lev = np.maximum(1.0, np.floor(0.5 / mmr[sym, tier]))
    leverage = np.minimum(rng.choice(LEVERAGES, positions, p=LEVERAGE_WEIGHTS / LEVERAGE_WEIGHTS.sum()), max_lev)

    wallets = (pl.DataFrame({"account_id": np.r_[acct, np.arange(accounts)],
                             "asset": np.r_[settle[sym], np.full(accounts, "USDT")]})
               .unique().sort("account_id", "asset"))
    positions_df = pl.DataFrame({
        "account_id": 1_000_000 + acct,
        "symbol": pl.Series(names[sym]).cast(pl.Categorical),
        "position_side": pl.Series(np.array(["both", "long", "short"])[side]).cast(pl.Categorical),
        "qty": qty, "entry_price": entry,
        "margin_mode": pl.Series(np.where(isolated, "isolated", "cross")).cast(pl.Categorical),
        "leverage": leverage})
    marks = pl.DataFrame({"symbol": instruments["symbol"], "mark_price": price,
                          "funding_rate": np.round(rng.normal(0.0001, 0.0002, symbols), 6)})
    held = np.flatnonzero(qty != 0)
    pick = np.sort(rng.choice(held, min(len(held), accounts // 2), replace=False))
    away = 1 + np.sign(qty[pick]) * -rng.uniform(0.01, 0.05, len(pick))
    orders = pl.DataFrame({
        "account_id": 1_000_000 + acct[pick], "symbol": positions_df["symbol"].gather(pick),
        "qty": _round_sig(qty[pick] * rng.uniform(0.1, 1.0, len(pick))),
        "price": _round_sig(mark[pick] * away),
        "leverage": leverage[pick], "margin_mode": positions_df["margin_mode"].gather(pick)})
    accounts_df = wallets.with_columns(pl.col("account_id") + 1_000_000, balance=pl.lit(0.0))

    # Margins and balances from the scan's own figures: equity a random multiple of what
    # maintenance needs, so a small tail sits at or past liquidation.
    tables = dict(instruments=instruments, risk_tiers=risk_tiers, accounts=accounts_df,
                  positions=positions_df, orders=orders, marks=marks)
    book = Book.from_tables(**tables)
    assert np.array_equal(book.positions.qty, qty)  # same row order
    out = ScanArrays.empty(len(book.positions), len(book.wallets))
    scan_into(book, book.mark, out, with_liq_price=False)
    p, a = out.positions, out.accounts
    iso_need = p["mm"] + p["fee"] - p["upnl"]
    iso_margin = np.maximum(iso_need * np.exp(rng.normal(1.3, 0.7, positions)), p["im"] * 0.1)
    tables["positions"] = positions_df.with_columns(
        isolated_margin=np.where(isolated & (qty != 0), np.round(iso_margin, 6), 0.0))
    need = a["cross_mm"] + a["cross_fee"]
    coin = (accounts_df["asset"] != "USDT").to_numpy()
    cash = np.exp(rng.normal(6.0, 2.0, len(need))) * np.where(coin, 1e-3, 1.0)
    equity = np.where(need > 0, need * np.exp(rng.normal(1.6, 0.8, len(need))), cash)
    # balance was 0, so the scanned equity is Σ cross upnl
    balance = np.maximum(equity - a["equity"], 0.0) + book.wallets.order_margin
    tables["accounts"] = accounts_df.with_columns(balance=np.round(balance, 6))
    return tables


def _round_sig(x: np.ndarray, digits: int = 8) -> np.ndarray:
    """Round to `digits` significant digits, as real quantities and prices are quoted."""
    with np.errstate(divide="ignore"):
        mag = np.floor(np.log10(np.abs(np.where(x == 0, 1.0, x)))).astype(int)
    scale = 10.0 ** (digits - 1 - mag)
    return np.round(x * scale) / scale


def generate_requests(tables: dict[str, pl.DataFrame], n: int, seed: int = 0) -> pl.DataFrame:
    """A realistic batch of margin requests (docs/model.md §7) against a generated book: mostly margin
    top-ups and removals on isolated positions, leverage changes, transfers, a few mode
    switches and a sprinkling of malformed requests."""
    rng = np.random.default_rng(seed)
    pos, acc = tables["positions"], tables["accounts"]
    p = rng.integers(0, pos.height, n)
    a = rng.integers(0, acc.height, n)
    op = rng.choice(["add_margin", "remove_margin", "set_leverage", "transfer_in", "transfer_out",
                     "set_margin_mode", "bogus"], n, p=[0.3, 0.15, 0.2, 0.15, 0.15, 0.04, 0.01])
    transfer = np.char.startswith(op.astype(str), "transfer")
    leverage = rng.choice(LEVERAGES, n)
    amount = np.round(np.exp(rng.normal(3.0, 2.0, n)), 2)
    return pl.DataFrame({
        "request_id": np.arange(n, dtype=np.int64),
        "account_id": np.where(transfer, acc["account_id"].to_numpy()[a], pos["account_id"].to_numpy()[p]),
        "symbol": pl.Series(np.where(transfer, None, pos["symbol"].cast(pl.String).to_numpy()[p]).tolist(),
                            dtype=pl.String),
        "position_side": pos["position_side"].cast(pl.String).to_numpy()[p],
        "op": op,
        "value": np.where(op == "set_leverage", leverage, amount),
        "mode": pl.Series(np.where(op == "set_margin_mode", rng.choice(["cross", "isolated"], n), None).tolist(),
                          dtype=pl.String),
        "asset": pl.Series(np.where(transfer, acc["asset"].to_numpy()[a], None).tolist(), dtype=pl.String),
    })


# The tick model (`generate_ticks`): numbers a desk would recognise for crypto perpetuals.
SECONDS_PER_YEAR = 365.25 * 86_400   # crypto trades every second of the year
MARKET_VOL = 0.55                    # annualised vol of the common market factor
COIN_VOL = {"BTC": 0.60, "ETH": 0.70, "BNB": 0.60, "SOL": 0.85, "XRP": 0.85, "DOGE": 0.95, "ADA": 0.85,
            "AVAX": 0.95, "LINK": 0.90, "DOT": 0.85, "TRX": 0.50, "TON": 0.80, "LTC": 0.75, "BCH": 0.80,
            "NEAR": 1.00, "APT": 1.00, "ARB": 1.05, "OP": 1.05, "SUI": 1.10, "PEPE": 1.30}
ALT_VOL = (0.90, 2.00)               # other coins: from the most to the least held
MARKET_JUMPS_PER_YEAR = 12.0         # market-wide jumps (every coin, scaled by its beta)
MARKET_JUMP_SCALE = 0.025            # mean size of a market jump (Laplace), 60% of them down
COIN_JUMPS_PER_YEAR = (6.0, 40.0)    # a coin's own jumps: the most held coin .. the least held
COIN_JUMP_SCALE = 0.04               # mean size of a coin's own jump at vol 1.0 (scales with vol)
BASIS_SD, BASIS_HALF_LIFE_S = 2e-4, 300.0   # each contract's premium over its coin: stationary sd, half-life


def tick_model(tables: dict[str, pl.DataFrame], seed: int = 0) -> pl.DataFrame:
    """The parameters `generate_ticks` draws with, one row per symbol: its `coin` (what the
    contract is priced on: an inverse contract's settle asset, a linear one's symbol less its
    settle asset), annualised `vol`, `beta` to the market factor, `jumps_per_year` and
    `jump_scale` of the coin's own jumps. Contracts of one coin share its price path."""
    rng = np.random.default_rng([seed, 1])
    inst = tables["instruments"]
    names = tables["marks"]["symbol"].cast(pl.String).to_list()
    by_symbol = dict(zip(inst["symbol"].cast(pl.String).to_list(),
                         zip(inst["contract_type"].cast(pl.String).to_list(), inst["settle_asset"].to_list())))
    coin = []
    for s in names:
        kind, settle = by_symbol[s]
        coin.append(settle if kind == "inverse" else s[: -len(settle)] if s.endswith(settle) and s != settle else s)
    held = dict(zip(*tables["positions"]["symbol"].cast(pl.String).value_counts().to_dict(as_series=False).values()))
    coins = sorted(set(coin))
    count = np.array([sum(held.get(s, 0) for s, c in zip(names, coin) if c == k) for k in coins], float) + 1.0
    thin = np.clip(np.log10(count.max() / count) / 3.0, 0.0, 1.0)      # 0 the most held .. 1 (1000x fewer)
    vol = np.array([COIN_VOL.get(k, np.nan) for k in coins])
    alt = np.isnan(vol)
    vol[alt] = (ALT_VOL[0] + (ALT_VOL[1] - ALT_VOL[0]) * thin[alt]) * np.exp(rng.normal(0.0, 0.08, alt.sum()))
    vol = np.clip(vol, 0.3, 2.5)
    beta = np.where(np.array(coins) == "BTC", 1.0, rng.uniform(0.8, 1.3, len(coins)))
    beta = np.minimum(beta, 0.95 * vol / MARKET_VOL)   # the factor explains at most 90% of a coin's variance
    jumps = COIN_JUMPS_PER_YEAR[0] + (COIN_JUMPS_PER_YEAR[1] - COIN_JUMPS_PER_YEAR[0]) * thin
    k = np.searchsorted(coins, coin)
    return pl.DataFrame({"symbol": names, "coin": coin, "vol": vol[k], "beta": beta[k], "jumps_per_year": jumps[k],
                         "jump_scale": COIN_JUMP_SCALE * vol[k]})


def generate_ticks(tables: dict[str, pl.DataFrame], n_ticks: int, seed: int = 0, feed: str = "all",
                   interval_ms: int | None = None, market_jumps_per_year: float = MARKET_JUMPS_PER_YEAR,
                   jump_rate_factor: float = 1.0) -> pl.DataFrame:
    """A mark-price stream (`ts`, `symbol`, `mark_price`) from the book's marks, deterministic
    for a seed. Each coin's log price moves by `beta` times a common market factor plus its
    own noise (so its annualised vol is `vol`), with rare jumps: market-wide ones and the
    coin's own; every contract of a coin (linear and inverse) follows the coin times a small
    premium that reverts to zero (`tick_model` has the numbers per symbol).

    `feed="all"`: `n_ticks` ticks, every symbol in each, `interval_ms` apart (default 1,000:
    the all-symbol 1-second feed of a desk). `feed="symbol"`: `n_ticks` updates of one symbol
    each, popular symbols more often, at random gaps of `interval_ms` on average (default 100)."""
    if feed not in ("all", "symbol"):
        raise BookError("gen", None, f"feed must be 'all' or 'symbol', got {feed!r}")
    interval_ms = interval_ms or (1000 if feed == "all" else 100)
    if interval_ms < 1:
        raise BookError("gen", None, f"the tick interval must be at least 1 ms, got {interval_ms}")
    model = tick_model(tables, seed)
    rng = np.random.default_rng([seed, 2])
    names = model["symbol"].to_list()
    coin = np.unique(model["coin"].to_numpy(), return_inverse=True)[1]
    n_coins, n_sym = coin.max() + 1 if len(coin) else 0, len(names)
    first = {}
    for s, c in enumerate(coin):
        first.setdefault(c, s)
    at = np.array([first[c] for c in range(n_coins)], dtype=np.int64)
    vol, beta = model["vol"].to_numpy()[at], model["beta"].to_numpy()[at]
    jump_rate = model["jumps_per_year"].to_numpy()[at] * jump_rate_factor / SECONDS_PER_YEAR
    jump_scale = model["jump_scale"].to_numpy()[at]
    idio = np.sqrt(np.maximum(vol ** 2 - (beta * MARKET_VOL) ** 2, 0.0))
    start_price = tables["marks"]["mark_price"].to_numpy().astype(float)

    if feed == "all":
        t = np.arange(1, n_ticks + 1) * (interval_ms / 1000.0)
        rows_sym = np.tile(np.arange(n_sym), n_ticks)
    else:
        gaps = np.maximum(1, np.round(rng.exponential(interval_ms, n_ticks))).astype(np.int64)
        t = np.cumsum(gaps) / 1000.0
        held = tables["positions"]["symbol"].cast(pl.String).value_counts()
        count = dict(zip(held["symbol"].to_list(), held["count"].to_list()))
        weight = np.array([count.get(s, 0) + 1.0 for s in names])
        rows_sym = rng.choice(n_sym, n_ticks, p=weight / weight.sum())
    # The market factor at every tick time (one path for the whole stream)
    dt = np.diff(np.r_[0.0, t])
    factor = np.cumsum(rng.normal(0.0, 1.0, len(t)) * MARKET_VOL * np.sqrt(dt / SECONDS_PER_YEAR)
                       + _jumps(rng, market_jumps_per_year / SECONDS_PER_YEAR * dt, MARKET_JUMP_SCALE))
    if feed == "all":
        own = np.cumsum(rng.normal(0.0, 1.0, (len(t), n_coins)) * idio * np.sqrt(dt[:, None] / SECONDS_PER_YEAR)
                        + _jumps(rng, jump_rate * dt[:, None], jump_scale), axis=0)
        log_coin = beta * factor[:, None] + own                                  # (tick, coin)
        premium = _premium_all(rng, len(t), n_sym, interval_ms / 1000.0)         # (tick, symbol)
        log_px = log_coin[:, coin] + premium
        rows_t = np.repeat(np.arange(len(t)), n_sym)
        px = start_price[rows_sym] * np.exp(log_px.ravel())
    else:
        c = coin[rows_sym]
        # a coin's own path needs only the times its contracts update: increments since its last update
        order = np.argsort(c, kind="stable")
        since = np.diff(np.r_[0.0, t[order]])
        new_coin = np.r_[True, c[order][1:] != c[order][:-1]]
        since[new_coin] = t[order][new_coin]
        step = (rng.normal(0.0, 1.0, n_ticks) * idio[c[order]] * np.sqrt(since / SECONDS_PER_YEAR)
                + _jumps(rng, jump_rate[c[order]] * since, jump_scale[c[order]]))
        own = np.empty(n_ticks)
        own[order] = _cumsum_by_group(step, new_coin)
        premium = _premium_each(rng, rows_sym, t, n_sym)
        rows_t = np.arange(n_ticks)
        px = start_price[rows_sym] * np.exp(beta[c] * factor + own + premium)
    start = np.datetime64("2026-01-01T00:00:00", "ms")
    ts = start + np.round(t * 1000).astype(np.int64).astype("timedelta64[ms]")
    return pl.DataFrame({"ts": ts[rows_t],
                         "symbol": pl.Series(np.array(names, dtype=object)[rows_sym].tolist(), dtype=pl.String),
                         "mark_price": _round_sig(px)})


def _jumps(rng, rate_dt, scale) -> np.ndarray:
    """Jump sizes (log) of a Poisson process over intervals with expected counts `rate_dt`:
    at most one jump per interval (intervals are seconds; jumps are days apart), Laplace
    sized with mean `scale`, 60% down."""
    rate_dt = np.asarray(rate_dt, float)
    hit = rng.random(rate_dt.shape) < -np.expm1(-rate_dt)
    size = rng.exponential(1.0, rate_dt.shape) * scale * np.where(rng.random(rate_dt.shape) < 0.6, -1.0, 1.0)
    return np.where(hit, size, 0.0)


def _premium_all(rng, n_ticks: int, n_sym: int, dt: float) -> np.ndarray:
    """Each contract's premium over its coin at every tick: an AR(1) that forgets with
    half-life BASIS_HALF_LIFE_S, stationary sd BASIS_SD, starting at 0 (the book's marks)."""
    phi = 0.5 ** (dt / BASIS_HALF_LIFE_S)
    shock = rng.normal(0.0, BASIS_SD * np.sqrt(1 - phi * phi), (n_ticks, n_sym))
    out = np.empty_like(shock)
    prev = np.zeros(n_sym)
    for k in range(n_ticks):
        prev = out[k] = phi * prev + shock[k]
    return out


def _premium_each(rng, rows_sym: np.ndarray, t: np.ndarray, n_sym: int) -> np.ndarray:
    """The same premium for a per-symbol feed: each contract's AR(1) stepped over the time
    since its own last update."""
    shock = rng.normal(0.0, BASIS_SD, len(t)).tolist()
    last_t, prev = [0.0] * n_sym, [0.0] * n_sym
    out = []
    for s, now, e in zip(rows_sym.tolist(), t.tolist(), shock):
        phi = 0.5 ** ((now - last_t[s]) / BASIS_HALF_LIFE_S)
        prev[s] = phi * prev[s] + math.sqrt(1 - phi * phi) * e
        last_t[s] = now
        out.append(prev[s])
    return np.array(out)


def _cumsum_by_group(x: np.ndarray, new_group: np.ndarray) -> np.ndarray:
    """Running sums of x restarting where `new_group` is True (rows grouped)."""
    total = np.cumsum(x)
    base = np.where(new_group, total - x, np.nan)
    return total - _ffill(base)


def _ffill(x: np.ndarray) -> np.ndarray:
    idx = np.where(np.isnan(x), 0, np.arange(len(x)))
    return x[np.maximum.accumulate(idx)]
