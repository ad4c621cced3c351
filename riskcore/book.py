"""The book: every table of docs/model.md §2 as validated, sorted, dense-id numpy columns.

Loaded once; kernels read these arrays directly. Layout decisions (they decide speed):
- symbols and wallets (account_id, asset) become dense integer ids at load;
- positions are sorted by (wallet, symbol, side), so each wallet's positions are one
  contiguous range `wallets.pos_start[w]:wallets.pos_start[w + 1]` (per-account sums are
  segmented reductions, race-free under `prange`) and the legs of a hedge-mode symbol are
  adjacent;
- money (balances, isolated margins) is int64 units of 10**-scale of its asset, exact.
"""

from dataclasses import dataclass, field, fields

import numpy as np
import polars as pl
from numba import njit

from .config import DEFAULT_ASSET, DEFAULT_MONEY_SCALE, JIT
from .errors import BookError, MoneyOverflowError, check
from .keys import N_SIDES, group_key, mode_key, position_key
from .money import add_split, split_sum, to_units
from .tables import as_frame, codes, float_col, int_col, require, str_col

SIDES = ("both", "long", "short")
BOTH, LONG, SHORT = 0, 1, 2
assert len(SIDES) == N_SIDES  # position keys (keys.py) count on it
MODES = ("cross", "isolated")
CONTRACT_TYPES = ("linear", "inverse")


@dataclass
class Instruments:
    """One row per symbol, sorted by symbol; tiers as ranges tier_start[s]:tier_start[s+1]."""
    symbol: list[str]
    inverse: np.ndarray            # bool
    settle_asset: np.ndarray       # int32 asset id
    face_value: np.ndarray
    taker_fee_rate: np.ndarray
    liquidation_fee_rate: np.ndarray
    mm_im_fraction: np.ndarray     # NaN where the instrument uses tiers
    tier_start: np.ndarray         # int64, len n_symbols + 1
    tier_floor: np.ndarray
    tier_mmr: np.ndarray
    tier_cum: np.ndarray           # maintenance amount, given or derived (model §4.2)
    tier_max_leverage: np.ndarray
    # Floors of each symbol's tiers after its first, one row per symbol, padded with +inf to
    # the most tiers any symbol has: the kernels count the breaks below a notional with the
    # same trip count for every row (a per-symbol count costs ~3x: its loop exit mispredicts).
    tier_breaks: np.ndarray = field(init=False, repr=False)

    def __len__(self):
        return len(self.symbol)

    def __post_init__(self):
        per_symbol = np.diff(self.tier_start)
        width = max(int(per_symbol.max(initial=1)) - 1, 0)
        self.tier_breaks = np.full((len(self.symbol), width), np.inf)
        for s in np.flatnonzero(per_symbol > 1):
            self.tier_breaks[s, :per_symbol[s] - 1] = self.tier_floor[self.tier_start[s] + 1:self.tier_start[s + 1]]


@dataclass
class Wallets:
    """One row per (account_id, asset), sorted; positions of wallet w are pos_start[w]:pos_start[w+1]."""
    account_id: np.ndarray
    asset: np.ndarray              # int32 asset id
    balance: np.ndarray            # int64 money units
    pos_start: np.ndarray          # int64, len n_wallets + 1
    order_margin: np.ndarray       # float, model §5.2: resting orders' margin (fixed by their limit prices)

    def __len__(self):
        return len(self.account_id)


@dataclass
class Positions:
    wallet: np.ndarray             # int32
    symbol: np.ndarray             # int32
    side: np.ndarray               # int8: BOTH, LONG, SHORT
    qty: np.ndarray
    entry_price: np.ndarray
    leverage: np.ndarray
    isolated: np.ndarray           # bool
    isolated_margin: np.ndarray    # int64 money units
    # Derived from entry_price/leverage so the kernel needs no division per row; call
    # Book.derive_positions after changing either.
    entry_unit: np.ndarray = None  # face·entry (linear) or face/entry (inverse)
    inv_leverage: np.ndarray = None

    def __len__(self):
        return len(self.qty)


@dataclass
class Orders:
    wallet: np.ndarray
    symbol: np.ndarray
    qty: np.ndarray
    price: np.ndarray
    leverage: np.ndarray
    isolated: np.ndarray

    def __len__(self):
        return len(self.qty)

    def take(self, rows) -> "Orders":
        """The orders at `rows` (indices or a mask), in their order."""
        return Orders(*(getattr(self, f.name)[rows] for f in fields(self)))


# Settlements applied to a book (settle refuses an id listed here): carried by every
# command's output book so that no settlement can be applied twice through a chain of them.
SETTLEMENTS_SCHEMA = {"settlement_id": pl.String, "steps": pl.String, "applied_at": pl.Datetime("us")}


def no_settlements() -> pl.DataFrame:
    return pl.DataFrame(schema=SETTLEMENTS_SCHEMA)


def load_settlements(df, table: str = "settlements") -> pl.DataFrame:
    """The applied-settlements table, checked: ids present and unique."""
    df = as_frame(df, table)
    require(df, table, *SETTLEMENTS_SCHEMA)
    ids = str_col(df, table, "settlement_id").cast(pl.String)
    dup = ids.is_duplicated().to_numpy()
    check(~dup, table, "settlement_id", "settlement id listed twice")
    try:
        return df.select(pl.col(c).cast(t) for c, t in SETTLEMENTS_SCHEMA.items())
    except pl.exceptions.PolarsError as e:
        raise BookError(table, None, f"cannot read as a settlements table: {e}") from None


@dataclass
class Book:
    assets: list[str]
    asset_scale: np.ndarray        # int64 decimal places of money per asset
    instruments: Instruments
    wallets: Wallets
    positions: Positions
    orders: Orders
    mark: np.ndarray               # per symbol, NaN where no mark is known
    funding_rate: np.ndarray       # per symbol, NaN where none is known
    settlements: pl.DataFrame = field(default_factory=no_settlements)  # applied settlement ids
    marks_name: str = "marks"      # what errors about the book's marks call them (their file)

    @classmethod
    def from_tables(cls, instruments, risk_tiers, accounts, positions, orders=None, marks=None, settlements=None,
                    money_scale: dict[str, int] | None = None, names: dict[str, str] | None = None):
        """Validate and load a book from polars/pyarrow tables (docs/model.md §2).

        `names` maps a table to what error messages call it (e.g. its file path);
        `money_scale` gives decimal places per asset (default 8).
        """
        names = {t: (names or {}).get(t, t) for t in
                 ("instruments", "risk_tiers", "accounts", "positions", "orders", "marks", "settlements")}
        inst_df = as_frame(instruments, names["instruments"])
        acct_df = as_frame(accounts, names["accounts"])
        inst, assets = _load_instruments(inst_df, as_frame(risk_tiers, names["risk_tiers"]), names)
        acct_assets = str_col(acct_df, names["accounts"], "asset", DEFAULT_ASSET)
        assets = sorted(set(assets) | set(acct_assets.cast(pl.String).unique().to_list()))
        inst.settle_asset = np.array([assets.index(a) for a in inst.settle_asset], dtype=np.int32)
        scales = np.array([(money_scale or {}).get(a, DEFAULT_MONEY_SCALE) for a in assets], np.int64)
        wallets = _load_wallets(acct_df, acct_assets, assets, scales, names["accounts"])
        pos = _load_positions(as_frame(positions, names["positions"]), inst, wallets, scales,
                              names["positions"])
        wallets.pos_start = np.r_[0, np.cumsum(np.bincount(pos.wallet, minlength=len(wallets)))].astype(np.int64)
        if orders is None:
            ords = Orders(*(np.empty(0, t) for t in (np.int32, np.int32, float, float, float, bool)))
        else:
            ords = _load_orders(as_frame(orders, names["orders"]), inst, wallets, pos, names["orders"])
        wallets.order_margin = order_margin(ords, inst, len(wallets))
        book = cls(assets, scales, inst, wallets, pos, ords,
                   np.full(len(inst), np.nan), np.full(len(inst), np.nan))
        book.derive_positions()
        book.marks_name = names["marks"]
        if settlements is not None:
            book.settlements = load_settlements(settlements, names["settlements"])
        if marks is not None:
            book.mark, book.funding_rate = book.read_marks(marks, names["marks"])
        return book

    def derive_positions(self) -> None:
        """Recompute the kernel's derived position columns (after entry/leverage changes)."""
        pos = self.positions
        pos.entry_unit, pos.inv_leverage = np.empty(len(pos)), np.empty(len(pos))
        _derive(pos.symbol, pos.entry_price, pos.leverage, self.instruments.face_value, self.instruments.inverse,
                pos.entry_unit, pos.inv_leverage)

    def face_mark(self, mark: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per symbol (face·P or face/P, +1 or −1): notional = |q|·face_mark,
        upnl = direction·q·(face_mark − entry_unit)."""
        inst = self.instruments
        with np.errstate(divide="ignore", invalid="ignore"):
            face_mark = np.where(inst.inverse, inst.face_value / mark, inst.face_value * mark)
        return face_mark, np.where(inst.inverse, -1.0, 1.0)

    def read_marks(self, marks, table: str = "marks"):
        """Per-symbol (mark, funding_rate) arrays from a marks table; unlisted symbols NaN."""
        df = as_frame(marks, table)
        sym = codes(str_col(df, table, "symbol"), self.instruments.symbol, table, "unknown symbol")
        price = float_col(df, table, "mark_price")
        check(price > 0, table, "mark_price", "mark price must be positive")
        rate = float_col(df, table, "funding_rate", default=np.nan, nullable=True)
        order = np.argsort(sym, kind="stable")
        dup = np.flatnonzero(np.diff(sym[order]) == 0)
        if len(dup):
            raise BookError(table, "symbol", "symbol listed twice", np.sort(order[np.r_[dup, dup + 1]]))
        mark = np.full(len(self.instruments), np.nan)
        funding = np.full(len(self.instruments), np.nan)
        mark[sym], funding[sym] = price, rate
        return mark, funding

    def check_marks(self, mark: np.ndarray, table: str | None = None) -> None:
        """Every symbol with a non-flat position needs a mark (errors call the marks `table`,
        by default the book's own marks file)."""
        table = self.marks_name if table is None else table
        held = np.zeros(len(self.instruments), dtype=bool)
        held[self.positions.symbol[self.positions.qty != 0]] = True
        missing = np.flatnonzero(held & np.isnan(mark))
        if len(missing):
            shown = ", ".join(self.instruments.symbol[s] for s in missing[:5])
            raise BookError(table, "mark_price", f"no mark for {len(missing)} held symbol(s): {shown}")

    # -- the one way money and orders change --------------------------------------------
    def apply_moves(self, balance=None, isolated_margin=None) -> None:
        """Add money to the book, all or nothing. `balance` is (wallet ids, units) and
        `isolated_margin` (position rows, units); a target named twice gets the exact sum.
        Every new amount is checked to fit 64-bit units before anything changes
        (MoneyOverflowError naming the wallets or rows)."""
        updates = [_summed_move(self.wallets.balance, balance, "accounts", "balance", "wallets"),
                   _summed_move(self.positions.isolated_margin, isolated_margin, "positions", "isolated_margin",
                                "positions")]
        for target, (ids, values) in zip((self.wallets.balance, self.positions.isolated_margin), updates):
            target[ids] = values

    def cancel_orders(self, rows) -> None:
        """Remove resting orders (indices or a mask) and re-derive their wallets' order margin."""
        gone = np.zeros(len(self.orders), dtype=bool)
        gone[rows] = True
        if not gone.any():
            return
        touched = np.unique(self.orders.wallet[gone])
        self.orders = self.orders.take(~gone)
        self.wallets.order_margin[touched] = 0.0
        left = np.isin(self.orders.wallet, touched)
        np.add.at(self.wallets.order_margin, self.orders.wallet[left], order_margins(self.orders, self.instruments, left))

    @property
    def output_scale(self) -> int:
        """Decimal places of every money column riskcore writes (model §3): the largest of the
        book's asset scales, DEFAULT_MONEY_SCALE for a book without assets."""
        return int(self.asset_scale.max()) if len(self.asset_scale) else DEFAULT_MONEY_SCALE

    def __post_init__(self):
        # value of one money unit of each wallet's balance / each symbol's settle asset
        asset_unit = 10.0 ** -self.asset_scale.astype(np.float64)  # per asset, then gathered: cheap per copy
        self.wallet_unit = asset_unit[self.wallets.asset]
        self.symbol_unit = asset_unit[self.instruments.settle_asset]


@njit(**JIT)
def _derive(symbol, entry_price, leverage, face, inverse, entry_unit, inv_leverage):
    """face·E (face/E inverse) and 1/leverage per position: the scan kernel then divides by nothing."""
    for i in range(len(symbol)):
        s = symbol[i]
        entry_unit[i] = face[s] / entry_price[i] if inverse[s] else face[s] * entry_price[i]
        inv_leverage[i] = 1.0 / leverage[i]


def _load_instruments(df: pl.DataFrame, tiers: pl.DataFrame, names: dict) -> tuple[Instruments, list[str]]:
    t = names["instruments"]
    require(df, t, "symbol", "contract_type", "face_value", "taker_fee_rate")
    symbol = str_col(df, t, "symbol").cast(pl.String)
    order = np.argsort(np.array(symbol.to_list(), dtype=object), kind="stable")
    dup = [i for i in range(1, len(order)) if symbol[int(order[i])] == symbol[int(order[i - 1])]]
    if dup:
        raise BookError(t, "symbol", "symbol listed twice",
                        np.sort(np.r_[order[dup], order[np.array(dup) - 1]]))
    ctype = codes(str_col(df, t, "contract_type"), list(CONTRACT_TYPES), t, "contract_type must be linear or inverse")
    inverse = ctype == 1
    if "settle_asset" in df.columns:
        settle = str_col(df, t, "settle_asset", "").cast(pl.String)
    else:
        settle = pl.Series("settle_asset", [""] * df.height)
    settle = settle.to_numpy().astype(object)
    check(~(inverse & (settle == "")), t, "settle_asset", "inverse contract needs a settle_asset")
    settle[settle == ""] = DEFAULT_ASSET
    face = float_col(df, t, "face_value")
    check(face > 0, t, "face_value", "face value must be positive")
    taker = float_col(df, t, "taker_fee_rate")
    check(taker >= 0, t, "taker_fee_rate", "fee rate must be >= 0")
    liq_fee = float_col(df, t, "liquidation_fee_rate", default=0.0, nullable=True)
    liq_fee = np.nan_to_num(liq_fee, nan=0.0)
    check(liq_fee >= 0, t, "liquidation_fee_rate", "fee rate must be >= 0")
    frac = float_col(df, t, "mm_im_fraction", default=np.nan, nullable=True)
    check(np.isnan(frac) | ((frac > 0) & (frac <= 1)), t, "mm_im_fraction", "must be in (0, 1]")
    syms = [symbol[int(i)] for i in order]
    inst = Instruments(syms, inverse[order], settle[order], face[order], taker[order], liq_fee[order],
                       frac[order], *_load_tiers(tiers, syms, frac[order], order, names))
    return inst, sorted(set(settle))


def _load_tiers(df: pl.DataFrame, symbols: list[str], frac: np.ndarray, inst_order: np.ndarray, names: dict):
    t = names["risk_tiers"]
    sym = codes(str_col(df, t, "symbol"), symbols, t, "unknown symbol")
    floor = float_col(df, t, "notional_floor")
    check(floor >= 0, t, "notional_floor", "must be >= 0")
    mmr = float_col(df, t, "mmr")
    check((mmr >= 0) & (mmr < 1), t, "mmr", "must be in [0, 1)")
    max_lev = float_col(df, t, "max_leverage")
    check(max_lev >= 1, t, "max_leverage", "must be >= 1")
    given = float_col(df, t, "maintenance_amount", default=np.nan, nullable=True)
    check(~(given < 0), t, "maintenance_amount", "must be >= 0")

    order = np.lexsort((floor, sym))
    sym_s, floor_s, mmr_s = sym[order], floor[order], mmr[order]
    first = np.r_[True, sym_s[1:] != sym_s[:-1]]
    same_floor = np.flatnonzero(~first[1:] & (floor_s[1:] == floor_s[:-1])) + 1
    if len(same_floor):
        raise BookError(t, "notional_floor", "two tiers of one symbol share a floor",
                        np.sort(np.r_[order[same_floor], order[same_floor - 1]]))
    bad_first = order[first & (floor_s != 0)]
    if len(bad_first):
        raise BookError(t, "notional_floor", "the first tier of a symbol must start at 0", np.sort(bad_first))
    falling = np.flatnonzero(~first[1:] & (mmr_s[1:] < mmr_s[:-1])) + 1
    if len(falling):
        raise BookError(t, "mmr", "mmr decreases as the notional floor rises", np.sort(order[falling]))

    cum = given[order].copy()
    for i in np.flatnonzero(np.isnan(cum)):  # derived cum (model §4.2): continuous mm across tiers
        cum[i] = 0.0 if first[i] else cum[i - 1] + floor_s[i] * (mmr_s[i] - mmr_s[i - 1])
    tier_start = np.searchsorted(sym_s, np.arange(len(symbols) + 1)).astype(np.int64)
    untiered = np.flatnonzero((np.diff(tier_start) == 0) & np.isnan(frac))
    if len(untiered):
        raise BookError(names["instruments"], "symbol",
                        f"no risk tiers (and no mm_im_fraction) for {', '.join(symbols[s] for s in untiered[:5])}",
                        np.sort(inst_order[untiered]))
    max_lev = max_lev[order]
    # A fraction-model instrument listed without tiers gets one open tier (floor 0, mmr 0, no
    # leverage cap) so every symbol has >= 1 tier and kernels never special-case it.
    bare = np.flatnonzero(np.diff(tier_start) == 0)
    if len(bare):
        at = tier_start[bare]
        floor_s, mmr_s, cum, max_lev = (np.insert(a, at, v) for a, v in
                                        ((floor_s, 0.0), (mmr_s, 0.0), (cum, 0.0), (max_lev, np.inf)))
        tier_start = tier_start + np.searchsorted(bare, np.arange(len(symbols) + 1), side="left")
    return tier_start, floor_s, mmr_s, cum, max_lev


def _load_wallets(df: pl.DataFrame, asset: pl.Series, assets: list[str], scales: np.ndarray, t: str):
    account_id = int_col(df, t, "account_id")
    asset_id = codes(asset, assets, t, "unknown asset")
    require(df, t, "balance")
    a, b = account_id, asset_id
    in_order = len(a) < 2 or bool(np.all((a[1:] > a[:-1]) | ((a[1:] == a[:-1]) & (b[1:] >= b[:-1]))))
    order = None if in_order else np.lexsort((asset_id, account_id))
    a_s, b_s = (a, b) if order is None else (a[order], b[order])
    dup = np.flatnonzero((a_s[1:] == a_s[:-1]) & (b_s[1:] == b_s[:-1])) + 1
    if len(dup):
        raise BookError(t, "account_id", "(account_id, asset) listed twice",
                        np.sort(source_rows(order, np.r_[dup, dup - 1])))
    balance = to_units(df["balance"], scales[asset_id], t)
    return Wallets(a_s, b_s, balance if order is None else balance[order], np.zeros(1, np.int64), np.zeros(0))


def sorted_order(key: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """(order, key[order]) of a stable sort; order is None when key is already in order (a
    file written in book order: checked in O(n), nothing sorted or gathered)."""
    if len(key) < 2 or np.all(key[1:] >= key[:-1]):
        return None, key
    order = pl.Series(key).arg_sort().to_numpy().astype(np.int64)  # polars sorts on every core
    return order, key[order]


def source_rows(order: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    """The input rows that sorted_order's `order` put at `rows`."""
    return rows if order is None else order[rows]


def wallet_of(account_id: np.ndarray, asset: np.ndarray, wallets: Wallets) -> np.ndarray:
    """Wallet id of each (account_id, asset), -1 where the book has no such wallet.

    Wallets are sorted by (account, asset): the account's first wallet is found by a binary
    search, or by a few steps on from the previous row's when accounts ascend (a file in
    book order: no cache-missing search), then a step through its few
    wallets (skipped when the row's account and asset are the previous row's)."""
    return _wallet_ids(np.ascontiguousarray(account_id, dtype=np.int64), np.ascontiguousarray(asset, dtype=np.int32),
                       wallets.account_id, wallets.asset)


@njit(**JIT)
def _wallet_ids(account_id, asset, wallet_account, wallet_asset):
    found = np.full(len(account_id), -1, dtype=np.int64)
    n = len(wallet_account)
    first = 0
    for i in range(len(account_id)):
        a = account_id[i]
        if i > 0 and a > account_id[i - 1]:
            stop = min(first + 16, n)  # a few steps; beyond them, the search
            while first < stop and wallet_account[first] < a:
                first += 1
            if first == stop and stop < n and wallet_account[first] < a:
                first = np.searchsorted(wallet_account, a)
        elif i == 0 or a < account_id[i - 1]:
            first = np.searchsorted(wallet_account, a)
        elif asset[i] == asset[i - 1]:
            found[i] = found[i - 1]
            continue
        w = first
        while w < n and wallet_account[w] == a:
            if wallet_asset[w] == asset[i]:
                found[i] = w
                break
            w += 1
    return found


def _wallet_of(account_id: np.ndarray, asset: np.ndarray, wallets: Wallets, t: str) -> np.ndarray:
    w = wallet_of(account_id, asset, wallets)
    missing = w < 0
    if missing.any():
        raise BookError(t, "account_id", "no accounts row for this account and the symbol's settle asset",
                        np.flatnonzero(missing))
    return w.astype(np.int32)


def _load_positions(df: pl.DataFrame, inst: Instruments, wallets: Wallets,
                    scales: np.ndarray, t: str) -> Positions:
    account_id = int_col(df, t, "account_id")
    sym = codes(str_col(df, t, "symbol"), inst.symbol, t, "unknown symbol")
    side = codes(str_col(df, t, "position_side", "both"), list(SIDES), t,
                 "position_side must be both, long or short").astype(np.int8)
    isolated = codes(str_col(df, t, "margin_mode"), list(MODES), t, "margin_mode must be cross or isolated") == 1
    qty = float_col(df, t, "qty")
    check(~((side == LONG) & (qty < 0)), t, "qty", "a long position cannot have qty < 0")
    check(~((side == SHORT) & (qty > 0)), t, "qty", "a short position cannot have qty > 0")
    entry = float_col(df, t, "entry_price")
    check(entry > 0, t, "entry_price", "entry price must be positive")
    lev = float_col(df, t, "leverage")
    check(lev >= 1, t, "leverage", "leverage must be >= 1")
    if "isolated_margin" in df.columns:
        iso_margin = to_units(df["isolated_margin"], scales[inst.settle_asset[sym]], t)
    else:
        iso_margin = np.zeros(df.height, np.int64)
    check(isolated | (iso_margin == 0), t, "isolated_margin", "a cross position cannot hold isolated margin")
    wallet = _wallet_of(account_id, inst.settle_asset[sym], wallets, t)

    key = position_key(wallet, sym, side, len(inst))
    order, key_s = sorted_order(key)
    dup = np.flatnonzero(key_s[1:] == key_s[:-1]) + 1
    if len(dup):
        raise BookError(t, "position_side", "(account_id, symbol, position_side) listed twice",
                        np.sort(source_rows(order, np.r_[dup, dup - 1])))
    iso_s, side_s = (isolated, side) if order is None else (isolated[order], side[order])
    mixed_mode, mixed_side = _mixed_groups(key_s, iso_s, side_s)
    if mixed_mode.any():
        raise BookError(t, "margin_mode", "one account holds a symbol both cross and isolated",
                        np.sort(source_rows(order, np.flatnonzero(mixed_mode))))
    if mixed_side.any():
        raise BookError(t, "position_side", "one account mixes 'both' with 'long'/'short' in a symbol",
                        np.sort(source_rows(order, np.flatnonzero(mixed_side))))
    return Positions(*(a if order is None else a[order] for a in (wallet, sym, side, qty, entry, lev, isolated,
                                                                  iso_margin)))


@njit(**JIT)
def _mixed_groups(key, isolated, side):
    """Per row of positions sorted by key, whether its (wallet, symbol) group (model §2.5)
    mixes margin modes, and whether it mixes 'both' with 'long'/'short'."""
    n = len(key)
    mixed_mode, mixed_side = np.zeros(n, np.bool_), np.zeros(n, np.bool_)
    g0 = 0
    while g0 < n:
        g1 = g0 + 1
        while g1 < n and key[g1] // N_SIDES == key[g0] // N_SIDES:
            g1 += 1
        if g1 - g0 > 1:
            modes = isolated[g0:g1]
            one_way = side[g0:g1] == BOTH
            mixed_mode[g0:g1] = modes.min() != modes.max()
            mixed_side[g0:g1] = one_way.any() and not one_way.all()
        g0 = g1
    return mixed_mode, mixed_side


def _load_orders(df: pl.DataFrame, inst: Instruments, wallets: Wallets, pos: Positions,
                 t: str) -> Orders:
    account_id = int_col(df, t, "account_id")
    sym = codes(str_col(df, t, "symbol"), inst.symbol, t, "unknown symbol")
    qty = float_col(df, t, "qty")
    check(qty != 0, t, "qty", "an order needs a non-zero qty")
    price = float_col(df, t, "price")
    check(price > 0, t, "price", "price must be positive")
    lev = float_col(df, t, "leverage")
    check(lev >= 1, t, "leverage", "leverage must be >= 1")
    isolated = codes(str_col(df, t, "margin_mode"), list(MODES), t, "margin_mode must be cross or isolated") == 1
    wallet = _wallet_of(account_id, inst.settle_asset[sym], wallets, t)
    # One margin mode per account and symbol (model §2.5), across its positions and orders.
    # `pos` is sorted by (wallet, symbol) and holds one mode per group: a binary search finds
    # each order's group among the positions.
    group = group_key(wallet, sym, len(inst))
    held_group = group_key(pos.wallet, pos.symbol, len(inst))
    if len(held_group):
        at = np.minimum(np.searchsorted(held_group, group), len(held_group) - 1)
        conflict = (held_group[at] == group) & (pos.isolated[at] != isolated)
        check(~conflict, t, "margin_mode", "order margin mode differs from the account's position in the symbol")
    by_group = np.argsort(mode_key(group, isolated), kind="stable")
    g = group[by_group]
    both_modes = np.flatnonzero((g[1:] == g[:-1]) & (isolated[by_group][1:] != isolated[by_group][:-1]))
    check(~np.isin(group, g[both_modes]), t, "margin_mode", "one account has both cross and isolated orders in a symbol")
    order = np.lexsort((sym, wallet))
    return Orders(wallet[order], sym[order], qty[order], price[order], lev[order], isolated[order])


def _summed_move(current: np.ndarray, move, table: str, column: str, what: str):
    """(ids, new values) of `current` after adding a (ids, units) move, exactly; refuses a sum
    outside 64 bits naming the ids."""
    if move is None or not len(move[0]):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ids, units = np.asarray(move[0], dtype=np.int64), np.asarray(move[1], dtype=np.int64)
    if np.any(ids[1:] <= ids[:-1]):  # sorted targets named once (the usual case) need no sort
        order = np.argsort(ids, kind="stable")
        ids, units = ids[order], units[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    hi, lo = split_sum(units, starts)
    values, fits = add_split(current[ids[starts]], hi, lo)
    if not fits.all():
        raise MoneyOverflowError(table, column, f"the move would take these {what} beyond 64-bit fixed point "
                                                f"money; nothing was changed", ids[starts][~fits])
    return ids[starts], values


def order_margins(orders: Orders, inst: Instruments, rows=slice(None)) -> np.ndarray:
    """Model §5.2, per resting order: abs(q)·f·price/leverage (inverse: abs(q)·f/price/leverage)."""
    sym = orders.symbol[rows]
    value = np.where(inst.inverse[sym], 1.0 / orders.price[rows], orders.price[rows])
    return np.abs(orders.qty[rows]) * inst.face_value[sym] * value / orders.leverage[rows]


def order_margin(orders: Orders, inst: Instruments, n_wallets: int) -> np.ndarray:
    """Order margin per wallet: the sum of its resting orders' margins."""
    return np.bincount(orders.wallet, weights=order_margins(orders, inst), minlength=n_wallets).astype(np.float64)
