"""Nightly settlement (docs/model.md §9): funding and daily settlement, exact to the money unit.

Streams the positions part by part (a Parquet file's row groups, or a folder of parts), so a
book larger than memory settles in bounded memory; only the wallets (one row per account and
asset) are held whole. Each per-position amount is floored to the asset's unit (debits
rounded up in size, credits down, both against the account); a house account takes minus
the sum per asset and kind, so every run's ledger sums to exactly zero. Output is written to
a temporary folder and renamed into place at the end: a killed run leaves nothing behind
and never touches the input.
"""

import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .book import SETTLEMENTS_SCHEMA, SIDES, Book, _load_orders, _load_positions, load_settlements, no_settlements, \
    wallet_of
from .config import DEFAULT_ASSET, PARQUET_COMPRESSION
from .errors import BookError, MoneyOverflowError
from .tables import arrow_to_frame, categorical, codes, int_col, str_col
from .keys import decode_group, decode_mode_key, group_key, mode_key, position_key
from .io import (as_table, book_tables, is_path, money_column, positions_table, read_table, reading, table_path,
                 write_parquet, write_tables)
from .output import output_dir
from .money import exact_amounts, exact_total, int64_parts, split_sum

KINDS = ("funding", "realize")
HOUSE_ACCOUNT_ID = -1  # the house account that takes every run's rounding (and imbalance)
PART_ROWS = 1_000_000


@dataclass
class Settlement:
    settlement_id: str
    steps: tuple[str, ...]
    totals: pl.DataFrame            # asset, kind, accounts (Σ account amounts), house
    negative_balances: pl.DataFrame  # account_id, asset, balance: wallets below zero afterwards
    positions: int
    seconds: float
    io_seconds: float

    def summary(self) -> str:
        lines = [f"settlement {self.settlement_id} ({', '.join(self.steps)}): {self.positions:,} positions "
                 f"in {self.seconds:.2f} s ({self.io_seconds:.2f} s reading and writing Parquet)"]
        for r in self.totals.iter_rows(named=True):
            lines.append(f"  {r['asset']:<6} {r['kind']:<8} accounts {r['accounts']:>24}  house {r['house']:>20}")
        n = self.negative_balances.height
        lines.append(f"wallets with a negative balance afterwards: {n:,}")
        for r in self.negative_balances.head(5).iter_rows(named=True):
            lines.append(f"  account {r['account_id']} {r['asset']}: {r['balance']}")
        return "\n".join(lines)


def position_amounts(book: Book, qty, entry, symbol, mark, rate, steps) -> dict[str, np.ndarray]:
    """Per position and step, the account's amount in units of its settle asset (model §9):
    funding −q·f·P·rate (inverse −q·f/P·rate: longs pay a positive rate), realize
    q·f·(P − E) (inverse q·f·(1/E − 1/P)); exact, see money.exact_amounts."""
    inst = book.instruments
    return {step: exact_amounts(step, qty, entry, inst.face_value, inst.inverse, mark, rate,
                                book.asset_scale[inst.settle_asset], symbol=symbol)
            for step in steps}


def settle(book_dir, out_dir, *, marks, settlement_id: str, funding=None, steps=KINDS,
           money_scale: dict[str, int] | None = None, part_rows: int = PART_ROWS, progress: bool = False,
           force: bool = False) -> Settlement:
    """Settle BOOK/ into OUT/ (a new book with `settlements.parquet` and `ledger.parquet`), all
    or nothing (see output.output_dir for what OUT may be; `force` replaces a folder riskcore
    did not write, never the input). `book_dir` may be a Book: settlement streams files, so an
    in-memory book is settled from a private copy on disk. `marks` and `funding` are tables or
    Parquet paths."""
    if isinstance(book_dir, Book):
        with tempfile.TemporaryDirectory() as tmp:
            write_tables(book_tables(book_dir), Path(tmp) / "book")
            scales = money_scale or {a: int(k) for a, k in zip(book_dir.assets, book_dir.asset_scale)}
            return settle(Path(tmp) / "book", out_dir, marks=marks, settlement_id=settlement_id, funding=funding,
                          steps=steps, money_scale=scales, part_rows=part_rows, progress=progress, force=force)
    t_start = time.perf_counter()
    io_time = 0.0
    book_dir, out_dir = Path(book_dir), Path(out_dir)
    steps = tuple(steps)
    bad = [s for s in steps if s not in KINDS]
    if bad or not steps:
        raise BookError("settle", "steps", f"steps must be among {', '.join(KINDS)}, got {', '.join(bad) or 'none'}")
    if len(set(steps)) != len(steps):
        raise BookError("settle", "steps", f"a step is named twice ({', '.join(steps)}): it would be applied twice")
    if not isinstance(settlement_id, str) or not settlement_id.strip():
        raise BookError("settle", "settlement_id", "a settlement needs a non-empty id")
    if isinstance(part_rows, bool) or not isinstance(part_rows, (int, np.integer)) or part_rows < 1:
        raise BookError("settle", "part_rows", f"must be a positive number of rows, got {part_rows}")
    tables = {}
    for name in ("instruments", "risk_tiers", "accounts", "settlements"):
        path = table_path(book_dir, name)
        if path is None:
            if name != "settlements":
                raise BookError(str(book_dir / f"{name}.parquet"), None, "missing table")
            continue
        tables[name] = (read_table(path), str(path))
    applied = load_settlements(*tables["settlements"]) if "settlements" in tables else no_settlements()
    if settlement_id in applied["settlement_id"].to_list():
        raise BookError(tables.get("settlements", (None, str(book_dir / "settlements.parquet")))[1], "settlement_id",
                        f"settlement {settlement_id} was already applied to this book")
    empty = pl.DataFrame(schema={"account_id": pl.Int64, "symbol": pl.String, "qty": pl.Float64,
                                 "entry_price": pl.Float64, "margin_mode": pl.String, "leverage": pl.Float64})
    head = Book.from_tables(tables["instruments"][0], tables["risk_tiers"][0], tables["accounts"][0], empty,
                            money_scale=money_scale, names={k: v[1] for k, v in tables.items()})
    if np.any(head.wallets.account_id == HOUSE_ACCOUNT_ID):
        raise BookError(tables["accounts"][1], "account_id", f"account {HOUSE_ACCOUNT_ID} is the house account",
                        np.flatnonzero(tables["accounts"][0]["account_id"].to_numpy() == HOUSE_ACCOUNT_ID))
    marks_table, marks_name = as_table(marks, "marks")
    mark, marks_rate = head.read_marks(marks_table, marks_name)
    rate = marks_rate
    rate_source = marks_name
    if funding is not None:
        funding_table, rate_source = as_table(funding, "funding")
        _, rate = head.read_marks(funding_table.with_columns(pl.lit(1.0).alias("mark_price")), rate_source)

    pos_path = table_path(book_dir, "positions")
    if pos_path is None:
        raise BookError(str(book_dir / "positions.parquet"), None, "missing table")
    files = sorted(pos_path.rglob("*.parquet")) if pos_path.is_dir() else [pos_path]
    if not files:
        raise BookError(str(pos_path), None, "folder holds no .parquet files")
    total_rows = 0
    for f in files:
        with reading(f):
            total_rows += pq.ParquetFile(f).metadata.num_rows
    orders_path = table_path(book_dir, "orders")
    orders = None
    if orders_path is not None:  # the rules of load_book; the one against positions once all parts are read
        orders = read_table(orders_path)
        loaded_orders = _load_orders(orders, head.instruments, head.wallets, head.positions, str(orders_path))
    delta = np.zeros((2, len(head.wallets)), dtype=np.int64)  # per wallet, exactly delta[0]·2^32 + delta[1]
    n_assets = len(head.assets)
    sums = {k: np.zeros(n_assets, dtype=object) for k in steps}  # exact, Python ints
    keys, groups = [], []
    part = 0
    scale = head.output_scale
    ledger_schema = pa.schema([("settlement_id", pa.string()), ("account_id", pa.int64()), ("asset", pa.string()),
                               ("symbol", pa.string()), ("position_side", pa.string()), ("kind", pa.string()),
                               ("amount", pa.decimal128(38, scale))])
    inputs = [p for p in (book_dir, marks, funding) if is_path(p)]
    with output_dir(out_dir, command="settle", inputs=inputs, force=force) as tmp:
        (tmp / "positions").mkdir()
        # one row group per part; compression as every riskcore output, dictionaries only where
        # they pay (the text columns: a dictionary pass over the amounts only costs time)
        ledger_file = pq.ParquetWriter(tmp / "ledger.parquet", ledger_schema, compression=PARQUET_COMPRESSION,
                                       use_dictionary=["settlement_id", "asset", "symbol", "position_side", "kind"])
        from tqdm import tqdm
        bar = tqdm(total=total_rows, unit="pos", unit_scale=True, file=sys.stderr,
                   disable=not (progress and sys.stderr.isatty()))
        for f in files:
            offset = 0
            t = time.perf_counter()
            for batch in _batches(f, part_rows):
                io_time += time.perf_counter() - t
                try:
                    df = arrow_to_frame(batch, str(f))
                    pos = _load_positions(df, head.instruments, head.wallets, head.asset_scale, str(f))
                except BookError as e:  # rows relative to the file, not the batch
                    raise BookError(e.table, e.column, e.problem, None if e.rows is None else e.rows + offset) from None
                _check_prices(head, pos, mark, rate, steps, marks_name, rate_source)
                try:
                    amounts = position_amounts(head, pos.qty, pos.entry_price, pos.symbol, mark, rate, steps)
                    ledger = _apply(head, pos, amounts, mark, delta, sums, steps)
                except MoneyOverflowError as e:  # rows of the file, not of the sorted batch
                    raise MoneyOverflowError(str(f), e.column, e.problem,
                                             offset + _position_file_rows(df, head, pos, e.rows, str(f))) from None
                keys.append(position_key(pos.wallet, pos.symbol, pos.side, len(head.instruments)))
                groups.append(mode_key(group_key(pos.wallet, pos.symbol, len(head.instruments)), pos.isolated))
                t = time.perf_counter()
                write_parquet(positions_table(head, pos), tmp / "positions" / f"part-{part:05d}.parquet")
                ledger_file.write_table(ledger.with_columns(pl.lit(settlement_id).alias("settlement_id")).select(
                    ledger_schema.names).to_arrow().cast(ledger_schema))
                part += 1
                offset += df.height
                bar.update(df.height)
        bar.close()
        if part == 0:  # an empty book still gets a (typed, empty) positions part
            write_parquet(positions_table(head, head.positions), tmp / "positions" / "part-00000.parquet")
        held_modes = _check_across_parts(keys, groups, str(pos_path))
        if orders is not None:  # one margin mode per account and symbol across positions and orders
            group, isolated = decode_mode_key(held_modes)
            ordered = np.unique(group_key(loaded_orders.wallet, loaded_orders.symbol, len(head.instruments)))
            at = np.minimum(np.searchsorted(ordered, group), max(len(ordered) - 1, 0))
            with_orders = (ordered[at] == group) if len(ordered) else np.zeros(len(group), bool)
            wallet, symbol = decode_group(group[with_orders], len(head.instruments))  # only what orders meet
            isolated = isolated[with_orders]
            held = SimpleNamespace(wallet=wallet, symbol=symbol, isolated=isolated)
            _load_orders(orders, head.instruments, head.wallets, held, str(orders_path))
        t = time.perf_counter()
        ledger_file.write_table(_house_rows(head, sums, steps, settlement_id).select(ledger_schema.names)
                                .to_arrow().cast(ledger_schema))
        ledger_file.close()
        try:
            head.apply_moves(balance=_wallet_moves(delta))
        except MoneyOverflowError as e:
            raise MoneyOverflowError(tables["accounts"][1], "balance",
                                     "the settlement would take a balance beyond 64-bit fixed point money "
                                     "(±(2^63 − 1) units); nothing was written",
                                     _wallet_file_rows(tables["accounts"][0], head, e.rows)) from None
        balance = head.wallets.balance
        accounts = pl.DataFrame({"account_id": head.wallets.account_id,
                                 "asset": np.array(head.assets, dtype=object)[head.wallets.asset].tolist(),
                                 "balance": money_column(head, balance, head.wallets.asset)})
        write_parquet(accounts, tmp / "accounts.parquet")
        for name in ("instruments", "risk_tiers"):
            write_parquet(tables[name][0], tmp / f"{name}.parquet")
        if orders is not None:
            write_parquet(orders, tmp / "orders.parquet")
        write_parquet(marks_table, tmp / "marks.parquet")  # the book now stands at the settlement prices
        write_parquet(pl.concat([applied, pl.DataFrame({"settlement_id": [settlement_id], "steps": [",".join(steps)],
                                                        "applied_at": [np.datetime64("now", "us").item()]},
                                                       schema=SETTLEMENTS_SCHEMA)]), tmp / "settlements.parquet")
        io_time += time.perf_counter() - t
    totals = pl.DataFrame({
        "asset": [a for k in steps for a in head.assets], "kind": [k for k in steps for _ in head.assets],
        "accounts": [str(_decimal(int(sums[k][i]), head.asset_scale[i])) for k in steps for i in range(n_assets)],
        "house": [str(_decimal(-int(sums[k][i]), head.asset_scale[i])) for k in steps for i in range(n_assets)]})
    negative = np.flatnonzero(balance < 0)
    return Settlement(settlement_id, steps, totals.filter(pl.col("accounts") != pl.col("house")),
                      pl.DataFrame({"account_id": head.wallets.account_id[negative],
                                    "asset": np.array(head.assets, dtype=object)[head.wallets.asset[negative]].tolist(),
                                    "balance": money_column(head, balance[negative], head.wallets.asset[negative])},
                                   schema_overrides={"asset": pl.String}),
                      total_rows, time.perf_counter() - t_start, io_time)


def _batches(path: Path, part_rows: int):
    """The file's record batches of at most part_rows rows; read errors name the file."""
    with reading(path):
        batches = pq.ParquetFile(path).iter_batches(batch_size=part_rows)
    while True:
        with reading(path):
            batch = next(batches, None)
        if batch is None:
            return
        yield batch


def _decimal(units: int, scale: int):
    from decimal import Decimal, localcontext
    with localcontext() as ctx:
        ctx.prec = 80  # exact for any sum of int64 amounts
        return Decimal(units).scaleb(-int(scale))


def _check_prices(book, pos, mark, rate, steps, marks_name, rate_name):
    held = np.flatnonzero(np.bincount(pos.symbol[pos.qty != 0], minlength=len(book.instruments)))
    names = book.instruments.symbol
    missing = held[np.isnan(mark[held])]
    if len(missing):
        raise BookError(marks_name, "mark_price",
                        f"no settlement price for held symbol(s): {', '.join(names[s] for s in missing[:5])}")
    if "funding" in steps:
        missing = held[np.isnan(rate[held])]
        if len(missing):
            raise BookError(rate_name, "funding_rate",
                            f"no funding rate for held symbol(s): {', '.join(names[s] for s in missing[:5])}")


def _apply(book, pos, amounts, mark, delta, sums, steps) -> pl.DataFrame:
    """Credit amounts to isolated margins (Book.apply_moves on this part's positions) or to
    the exact wallet deltas (summed over parts, applied once at the end, also by
    Book.apply_moves: see _wallet_moves); entry ← P; ledger rows."""
    wallet_of = pos.wallet.astype(np.int64)
    asset = book.instruments.settle_asset[pos.symbol]
    iso = pos.isolated
    rows = []
    for kind in steps:
        units = amounts[kind]
        cross = np.flatnonzero(~iso & (units != 0))
        if len(cross):  # positions come sorted by wallet: exact sums per run, in two halves
            w = wallet_of[cross]
            starts = np.flatnonzero(np.r_[True, w[1:] != w[:-1]])
            hi, lo = split_sum(units[cross], starts)
            ws = w[starts]
            delta[0, ws] += hi
            delta[1, ws] += lo
            delta[0, ws] += delta[1, ws] >> 32  # carry, so the low half stays below 2^32
            delta[1, ws] &= 0xFFFFFFFF
        for a in np.flatnonzero(np.bincount(asset, minlength=len(book.assets))):
            sums[kind][a] += exact_total(units[asset == a])
        nz = np.flatnonzero(units != 0)
        rows.append(pl.DataFrame({
            "account_id": book.wallets.account_id[pos.wallet[nz]],
            "asset": categorical(asset[nz], book.assets).cast(pl.String),
            "symbol": categorical(pos.symbol[nz], book.instruments.symbol).cast(pl.String),
            "position_side": categorical(pos.side[nz], SIDES).cast(pl.String),
            "kind": pl.repeat(kind, len(nz), eager=True, dtype=pl.String),
            "amount": money_column(book, units[nz], asset[nz])}))
    # every step's credit to an isolated margin, through the book (exact, checked, all or nothing)
    # (each step's amount is below 2^62 in size and a step is never named twice, so the
    # steps' sum per row is exact in int64)
    held = np.flatnonzero(iso)
    try:
        replace(book, positions=pos).apply_moves(isolated_margin=(held, sum(amounts[kind][held] for kind in steps)))
    except MoneyOverflowError as e:
        raise MoneyOverflowError("positions", "isolated_margin", "the settlement would take these isolated margins "
                                 "beyond 64-bit fixed point money (±(2^63 − 1) units; counted in the first streamed "
                                 "part that has any); nothing was written", e.rows) from None
    if "realize" in steps:
        pos.entry_price = np.where(pos.qty != 0, mark[pos.symbol], pos.entry_price)
    return pl.concat(rows)


def _wallet_moves(delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Book.apply_moves's (wallet ids, int64 units) for exact wallet changes kept as
    delta[0]·2^32 + delta[1] (0 ≤ delta[1] < 2^32): one move each, several int64 parts for
    the rare change beyond int64 (apply_moves adds them back exactly)."""
    changed = np.flatnonzero((delta[0] != 0) | (delta[1] != 0))
    hi, lo = delta[0][changed], delta[1][changed]
    small = np.abs(hi) < 2**30
    ids, units = [changed[small]], [(hi[small] << 32) + lo[small]]
    for w, h, low in zip(changed[~small], hi[~small], lo[~small]):
        parts = int64_parts((int(h) << 32) + int(low))
        ids.append(np.full(len(parts), w, dtype=np.int64))
        units.append(np.array(parts, dtype=np.int64))
    return np.concatenate(ids), np.concatenate(units)


def _position_file_rows(df, book, pos, rows, t) -> np.ndarray:
    """Rows of the file batch `df` that became `pos` rows `rows` (positions are loaded sorted
    by wallet, symbol and side; the same unique key finds them again). Error path only."""
    sym = codes(str_col(df, t, "symbol"), book.instruments.symbol, t, "unknown symbol")
    side = codes(str_col(df, t, "position_side", "both"), list(SIDES), t, "bad position_side")
    w = wallet_of(int_col(df, t, "account_id"), book.instruments.settle_asset[sym], book.wallets)
    key = position_key(w, sym, side, len(book.instruments))
    want = position_key(pos.wallet[rows], pos.symbol[rows], pos.side[rows], len(book.instruments))
    return np.sort(np.flatnonzero(np.isin(key, want)))


def _wallet_file_rows(accounts: pl.DataFrame, book, wallets) -> np.ndarray:
    """Rows of the accounts file holding wallet ids `wallets` (wallets are its rows sorted by
    account and asset, as Book.from_tables sorts them). Error path only."""
    asset = codes(str_col(accounts, "accounts", "asset", DEFAULT_ASSET), book.assets, "accounts", "unknown asset")
    order = np.lexsort((asset, int_col(accounts, "accounts", "account_id")))
    return np.sort(order[wallets])


def _house_rows(book, sums, steps, settlement_id) -> pl.DataFrame:
    asset_ids = [a for k in steps for a in range(len(book.assets)) if sums[k][a] != 0]
    kinds = [k for k in steps for a in range(len(book.assets)) if sums[k][a] != 0]
    units = [-int(sums[k][a]) for k, a in zip(kinds, asset_ids)]  # exact: may exceed int64 (many accounts)
    amount = pl.from_arrow(pa.array([_decimal(u, book.asset_scale[a]) for u, a in zip(units, asset_ids)],
                                    type=pa.decimal128(38, book.output_scale)))
    return pl.DataFrame({
        "settlement_id": [settlement_id] * len(units), "account_id": [HOUSE_ACCOUNT_ID] * len(units),
        "asset": [book.assets[a] for a in asset_ids], "symbol": [None] * len(units),
        "position_side": [None] * len(units), "kind": kinds,
        "amount": amount},
        schema_overrides={"symbol": pl.String, "position_side": pl.String, "asset": pl.String, "kind": pl.String})


def _check_across_parts(keys, groups, table) -> np.ndarray:
    """The book rules that span parts: duplicate keys, one margin mode per account and symbol.
    Returns the sorted distinct mode keys held (keys.mode_key)."""
    def sorted_values(chunks):  # polars sorts on every core; numpy's unique hashes slowly
        return pl.Series(np.concatenate(chunks) if chunks else np.zeros(0, np.int64)).sort().to_numpy()
    keys = sorted_values(keys)
    if len(keys) and np.any(keys[1:] == keys[:-1]):
        raise BookError(table, "position_side", "(account_id, symbol, position_side) listed twice across parts")
    g = sorted_values(groups)
    g = g[np.r_[True, g[1:] != g[:-1]]] if len(g) else g
    group = decode_mode_key(g)[0]
    if len(g) and np.any(group[1:] == group[:-1]):
        raise BookError(table, "margin_mode", "one account holds a symbol both cross and isolated (across parts)")
    return g
