"""Nightly settlement (docs/model.md §9): funding and daily settlement, exact to the money unit.

Streams the positions part by part (a Parquet file's row groups, or a folder of parts), so a
book larger than memory settles in bounded memory; only the wallets (one row per account and
asset) are held whole. Each per-position amount is floored to the asset's unit (debits
rounded up in size, credits down, both against the account); a house account takes minus
the sum per asset and kind, so every run's ledger sums to exactly zero. Output is written to
a temporary folder and renamed into place at the end: a killed run leaves nothing behind
and never touches the input.

Three parts are in hand at a time: a thread reads and loads the next one, the caller computes
this one (amounts, ledger rows and sums in compiled passes), another thread writes the last
one. Parquet decoding and encoding, polars, numpy and the kernels mostly run without the GIL.
"""

import queue
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from numba import njit

from .book import SETTLEMENTS_SCHEMA, SIDES, Book, _load_orders, _load_positions, load_settlements, no_settlements, \
    wallet_of
from .config import DEFAULT_ASSET, JIT, PARQUET_COMPRESSION
from .errors import BookError, MoneyOverflowError
from .tables import arrow_to_frame, codes, int_col, str_col
from .keys import decode_group, decode_mode_key, group_key, group_of, mode_key, position_key
from .io import (as_table, book_tables, is_path, money_column, positions_table, read_table, reading, table_path,
                 write_parquet, write_tables, writing)
from .output import output_dir
from .money import add_exact, decimal_places, exact_amounts, int64_parts, units_to_decimal

KINDS = ("funding", "realize")
HOUSE_ACCOUNT_ID = -1  # the house account that takes every run's rounding (and imbalance)
# Positions per streamed part: about three parts are alive at once (one read ahead, one
# computed, one written); at 10M positions 1M-row parts peaked at 1.7 GB RSS, 500k at 1.4 GB
# for the same time (250k: no faster, little smaller).
PART_ROWS = 500_000

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
                 f"in {self.seconds:.2f} s (reading and writing Parquet, on threads beside the computing: "
                 f"{self.io_seconds:.2f} s)"]
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
    qty_places = decimal_places(qty)  # once for every step
    return {step: exact_amounts(step, qty, entry, inst.face_value, inst.inverse, mark, rate,
                                book.asset_scale[inst.settle_asset], symbol=symbol, qty_places=qty_places)
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
    clock = _Clock()
    # a thread reads and loads the next part while this one is computed (the first one while
    # the orders are checked)
    with _ReadAhead(_loaded_parts(files, part_rows, head, clock)) as parts:
        orders_path = table_path(book_dir, "orders")
        orders = None
        if orders_path is not None:  # the rules of load_book; the one against positions once all parts are read
            orders = read_table(orders_path)
            loaded_orders = _load_orders(orders, head.instruments, head.wallets, head.positions, str(orders_path))
        inputs = [p for p in (book_dir, marks, funding) if is_path(p)]
        with output_dir(out_dir, command="settle", inputs=inputs, force=force) as tmp:
            bar = _progress_bar(total_rows, progress)
            run = _stream(parts, head, tmp, mark, rate, steps, settlement_id, (marks_name, rate_source), bar, clock)
            bar.close()
            t = time.perf_counter()
            held_group, held_isolated = _check_across_parts(run.keys, str(pos_path))
            if orders is not None:  # one margin mode per account and symbol across positions and orders
                ordered = group_key(loaded_orders.wallet, loaded_orders.symbol, len(head.instruments))
                at = np.minimum(np.searchsorted(held_group, ordered), max(len(held_group) - 1, 0))
                met = (held_group[at] == ordered) if len(held_group) else np.zeros(len(ordered), bool)
                wallet, symbol = decode_group(ordered[met], len(head.instruments))  # only what orders meet
                held = SimpleNamespace(wallet=wallet, symbol=symbol, isolated=held_isolated[at[met]])
                _load_orders(orders, head.instruments, head.wallets, held, str(orders_path))
            try:
                head.apply_moves(balance=_wallet_moves(run.delta))
            except MoneyOverflowError as e:
                raise MoneyOverflowError(tables["accounts"][1], "balance",
                                         "the settlement would take a balance beyond 64-bit fixed point money "
                                         "(±(2^63 − 1) units); nothing was written",
                                         _wallet_file_rows(tables["accounts"][0], head, e.rows)) from None
            balance = head.wallets.balance
            _write_parquet(pa.table({"account_id": head.wallets.account_id,
                                     "asset": pa.DictionaryArray.from_arrays(head.wallets.asset, head.assets),
                                     "balance": units_to_decimal(balance, head.output_scale,
                                                                 head.asset_scale[head.wallets.asset])}),
                           tmp / "accounts.parquet", store_schema=False)  # asset read back as text, as before
            for name in ("instruments", "risk_tiers"):
                write_parquet(tables[name][0], tmp / f"{name}.parquet")
            if orders is not None:
                write_parquet(orders, tmp / "orders.parquet")
            write_parquet(marks_table, tmp / "marks.parquet")  # the book now stands at the settlement prices
            write_parquet(pl.concat([applied, pl.DataFrame({"settlement_id": [settlement_id], "steps": [",".join(steps)],
                                                            "applied_at": [np.datetime64("now", "us").item()]},
                                                           schema=SETTLEMENTS_SCHEMA)]), tmp / "settlements.parquet")
            clock.io += time.perf_counter() - t
    total = run.totals()
    n_assets = len(head.assets)
    totals = pl.DataFrame({
        "asset": [a for k in steps for a in head.assets], "kind": [k for k in steps for _ in head.assets],
        "accounts": [str(_decimal(total[s, a], head.asset_scale[a])) for s in range(len(steps)) for a in range(n_assets)],
        "house": [str(_decimal(-total[s, a], head.asset_scale[a])) for s in range(len(steps)) for a in range(n_assets)]})
    negative = np.flatnonzero(balance < 0)
    return Settlement(settlement_id, steps, totals.filter(pl.col("accounts") != pl.col("house")),
                      pl.DataFrame({"account_id": head.wallets.account_id[negative],
                                    "asset": np.array(head.assets, dtype=object)[head.wallets.asset[negative]].tolist(),
                                    "balance": money_column(head, balance[negative], head.wallets.asset[negative])},
                                   schema_overrides={"asset": pl.String}),
                      total_rows, time.perf_counter() - t_start, clock.io)


@dataclass
class _Running:
    """What settlement keeps across parts: per wallet the exact sum of its cross amounts,
    delta[0]·2^32 + delta[1] (money.add_exact), applied once at the end; per step and asset
    the exact sum of every amount, the same way; each part's keys.mode_key(position key,
    isolated) for the rules that span parts; and a Book over the part in hand, whose
    positions are swapped per part (built once: Book.__post_init__ derives per-wallet columns)."""
    delta: np.ndarray
    sums: np.ndarray
    keys: list
    part: Book

    def totals(self) -> np.ndarray:
        """Per step and asset, the accounts' exact sum (Python ints: it may exceed int64)."""
        return (self.sums[:, 0].astype(object) << 32) + self.sums[:, 1].astype(object)


def _stream(parts, head, tmp, mark, rate, steps, settlement_id, names, bar, clock) -> _Running:
    """Settle the parts as they come: amounts, isolated margins, new entry prices, the
    ledger rows; each part's positions and ledger rows are written on a thread while the
    next part is computed. Ends the ledger with the house rows."""
    run = _Running(np.zeros((2, len(head.wallets)), np.int64), np.zeros((len(steps), 2, len(head.assets)), np.int64),
                   [], replace(head))
    (tmp / "positions").mkdir()
    part, written = 0, None
    with _LedgerFile(tmp / "ledger.parquet", head.output_scale) as ledger_file, ThreadPoolExecutor(1) as writer:
        for f, offset, df, pos in parts:
            try:
                positions, ledger = _settle_part(head, pos, mark, rate, steps, settlement_id, run, names,
                                                 ledger_file.schema)
            except MoneyOverflowError as e:  # rows of the file, not of the sorted batch
                raise MoneyOverflowError(str(f), e.column, e.problem,
                                         offset + _position_file_rows(df, head, pos, e.rows, str(f))) from None
            if written is not None:
                written.result()  # one part in the writer's hands at a time (memory); its errors here
            written = writer.submit(_write_part, positions, tmp / "positions" / f"part-{part:05d}.parquet",
                                    ledger_file, ledger, clock)
            part += 1
            bar.update(len(pos))
        if written is not None:
            written.result()
        if part == 0:  # an empty book still gets a (typed, empty) positions part
            _write_parquet(positions_table(head, head.positions).to_arrow(), tmp / "positions" / "part-00000.parquet")
        ledger_file.write(_house_rows(head, run, steps, settlement_id, ledger_file.schema))
    return run


def _settle_part(head, pos, mark, rate, steps, settlement_id, run, names, ledger_schema):
    """One part: (its new positions table, its ledger rows), amounts added to `run`."""
    _check_prices(head, pos, mark, rate, steps, *names)
    amounts = position_amounts(head, pos.qty, pos.entry_price, pos.symbol, mark, rate, steps)
    run.part.positions = pos
    ledger = _apply(run.part, amounts, mark, run, steps, settlement_id, ledger_schema)
    run.keys.append(mode_key(position_key(pos.wallet, pos.symbol, pos.side, len(head.instruments)), pos.isolated))
    return positions_table(head, pos).to_arrow(), ledger


def _progress_bar(total_rows: int, progress: bool):
    from tqdm import tqdm
    return tqdm(total=total_rows, unit="pos", unit_scale=True, file=sys.stderr,
                disable=not (progress and sys.stderr.isatty()))


def _parquet_options(schema: pa.Schema) -> dict:
    """How settle writes its Arrow tables (measured on the 10M-position book: see README,
    Nightly settlement): riskcore's codec; dictionary encoding only where the column is text
    (on floats and decimals it is tried, fails and falls back: time for nothing); no
    statistics (min/max of text and decimal columns cost more than writing them, and
    riskcore reads these files whole)."""
    return dict(compression=PARQUET_COMPRESSION, write_statistics=False,
                use_dictionary=[f.name for f in schema if pa.types.is_dictionary(f.type)])


def _write_parquet(table: pa.Table, path: Path, **options) -> None:
    with writing(path):
        pq.write_table(table, path, **_parquet_options(table.schema), **options)


class _LedgerFile:
    """ledger.parquet, written as the parts stream, one row group per part; its text columns
    are dictionaries here (no string per row) and plain text in the file, as a reader sees it."""
    def __init__(self, path: Path, scale: int):
        self.path, self.schema = path, _ledger_schema(scale)
        with writing(path):
            self._writer = pq.ParquetWriter(path, self.schema, store_schema=False, **_parquet_options(self.schema))

    def write(self, table: pa.Table) -> None:
        with writing(self.path):
            self._writer.write_table(table, row_group_size=max(table.num_rows, 1))

    def __enter__(self) -> "_LedgerFile":
        return self

    def __exit__(self, kind, error, trace) -> None:
        """Closes the file; after an error, quietly (that error is the one to report), so a
        failed settlement never keeps the file open (a full disk stays full while it is)."""
        if kind is None:
            with writing(self.path):
                self._writer.close()
        else:
            with suppress(OSError, pa.ArrowException):
                self._writer.close()


def _write_part(positions: pa.Table, path: Path, ledger_file: _LedgerFile, ledger: pa.Table, clock) -> None:
    with clock.timing():
        _write_parquet(positions, path)
        ledger_file.write(ledger)


class _Clock:
    """Seconds spent reading and writing Parquet, summed over the threads doing it."""
    def __init__(self):
        self.io = 0.0
        self._lock = threading.Lock()

    @contextmanager
    def timing(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.io += time.perf_counter() - t


def _parts(path: Path, part_rows: int, clock: _Clock):
    """The file as tables of part_rows rows (the last fewer), across its row groups; read
    errors name the file. A part handed on is not referenced here any more (memory)."""
    with reading(path), clock.timing():
        batches = pq.ParquetFile(path).iter_batches(batch_size=part_rows)
    pending, rows, done = [], 0, False
    while not done:
        with reading(path), clock.timing():
            batch = next(batches, None)
        done = batch is None
        if not done:
            pending.append(batch)
            rows += len(batch)
        batch = None
        while rows >= part_rows or (done and rows):
            table = pa.Table.from_batches(pending)
            pending, rows = ([table.slice(part_rows)], rows - part_rows) if rows > part_rows else ([], 0)
            ready, table = [table.slice(0, part_rows)], None
            yield ready.pop()


def _loaded_parts(files, part_rows, head, clock):
    """(file, offset of the part in it, the part's frame, its loaded Positions) per part, in order."""
    for f in files:
        offset = 0
        for table in _parts(f, part_rows, clock):
            loaded = _load_part(table, f, offset, head)
            offset += len(table)
            del table  # nothing of a part stays here once it is handed on (memory)
            yield loaded
            del loaded


def _load_part(table, f, offset, head):
    try:
        df = arrow_to_frame(table, str(f))
        return f, offset, df, _load_positions(df, head.instruments, head.wallets, head.asset_scale, str(f))
    except BookError as e:  # rows relative to the file, not the part
        raise BookError(e.table, e.column, e.problem, None if e.rows is None else e.rows + offset) from None


class _ReadAhead:
    """Iterates `items` on a thread, producing the next item while the caller works on this
    one (Parquet decoding, polars and numpy mostly run without the GIL); the thread's
    exceptions are raised here, in order. At most two items are alive at a time."""
    def __init__(self, items):
        self._items, self._handoff, self._stop = items, queue.Queue(maxsize=1), threading.Event()
        self._thread = threading.Thread(target=self._produce, daemon=True)

    def _produce(self):
        try:
            for item in self._items:
                self._handoff.put((item, None))
                del item  # the caller's now (memory)
                self._handoff.join()  # taken: produce the next one while the caller works
                if self._stop.is_set():
                    return
            self._handoff.put((None, None))
        except BaseException as e:
            self._handoff.put((None, e))

    def __enter__(self):
        self._thread.start()
        return self

    def __iter__(self):
        while True:
            item, error = self._handoff.get()
            self._handoff.task_done()
            if error is not None:
                raise error
            if item is None:
                return
            yield item

    def __exit__(self, *exc):
        self._stop.set()
        while self._thread.is_alive():  # let a producer waiting to hand over finish
            try:
                self._handoff.get(timeout=0.05)
                self._handoff.task_done()
            except queue.Empty:
                pass
        self._thread.join()


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


def _apply(book, amounts, mark, run, steps, settlement_id, schema) -> pa.Table:
    """Credit amounts to the isolated margins of the part `book.positions` (Book.apply_moves)
    or to the exact wallet deltas (summed over parts in `run`, applied once at the end, also
    by Book.apply_moves: see _wallet_moves); entry ← P. Returns the part's ledger rows."""
    pos = book.positions
    units = np.stack([amounts[kind] for kind in steps])
    account_id, asset, symbol, side, kind, amount = _ledger_rows(
        units, np.array([KINDS.index(k) for k in steps]), pos.wallet, pos.symbol, pos.side, pos.isolated,
        book.instruments.settle_asset, book.wallets.account_id, run.delta, run.sums)
    # every step's credit to an isolated margin, through the book (exact, checked, all or nothing)
    # (each step's amount is below 2^62 in size and a step is never named twice, so the
    # steps' sum per row is exact in int64)
    held = np.flatnonzero(pos.isolated)
    try:
        book.apply_moves(isolated_margin=(held, units[:, held].sum(axis=0)))
    except MoneyOverflowError as e:
        raise MoneyOverflowError("positions", "isolated_margin", "the settlement would take these isolated margins "
                                 "beyond 64-bit fixed point money (±(2^63 − 1) units; counted in the first streamed "
                                 "part that has any); nothing was written", e.rows) from None
    if "realize" in steps:
        pos.entry_price = np.where(pos.qty != 0, mark[pos.symbol], pos.entry_price)
    return _ledger_table(book, schema, settlement_id, account_id, asset, symbol, side, kind,
                         units_to_decimal(amount, book.output_scale, book.asset_scale[asset]))


@njit(**JIT)
def _ledger_rows(units, kinds, wallet, symbol, side, isolated, settle_asset, account_id, delta, sums):
    """One pass over a part's amounts (units[step, row]): each added exactly to its step's
    and asset's sum and, for a cross position, to its wallet's delta; the non-zero ones as
    ledger columns (account_id, asset, symbol, side, kind, units), step by step."""
    n = 0
    for s in range(units.shape[0]):
        for i in range(units.shape[1]):
            n += units[s, i] != 0
    out_account, out_units = np.empty(n, np.int64), np.empty(n, np.int64)
    out_asset, out_symbol, out_side, out_kind = (np.empty(n, np.int32), np.empty(n, np.int32),
                                                 np.empty(n, np.int32), np.empty(n, np.int32))
    j = 0
    for s in range(units.shape[0]):
        for i in range(units.shape[1]):
            u = units[s, i]
            if u == 0:
                continue
            a = settle_asset[symbol[i]]
            add_exact(sums[s], a, u)
            if not isolated[i]:
                add_exact(delta, wallet[i], u)
            out_account[j], out_asset[j], out_symbol[j], out_side[j], out_kind[j], out_units[j] = \
                account_id[wallet[i]], a, symbol[i], side[i], kinds[s], u
            j += 1
    return out_account, out_asset, out_symbol, out_side, out_kind, out_units


def _ledger_schema(scale: int) -> pa.Schema:
    text = pa.dictionary(pa.int32(), pa.string())  # written as text: see the ParquetWriter
    return pa.schema([("settlement_id", text), ("account_id", pa.int64()), ("asset", text), ("symbol", text),
                      ("position_side", text), ("kind", text), ("amount", pa.decimal128(38, scale))])


def _ledger_table(book, schema, settlement_id, account_id, asset, symbol, side, kind, amount) -> pa.Table:
    """Ledger rows from codes: asset, symbol, side and kind index the book's assets and
    symbols, SIDES and KINDS (symbol and side are null on the house rows)."""
    def text(codes, names):
        return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(names, pa.string()))
    return pa.table([text(np.zeros(len(account_id), np.int32), [settlement_id]), pa.array(account_id, pa.int64()),
                     text(asset, book.assets), text(symbol, book.instruments.symbol), text(side, SIDES),
                     text(kind, KINDS), amount], schema=schema)
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


def _house_rows(book, run, steps, settlement_id, schema) -> pa.Table:
    """Per step and asset, minus the accounts' exact sum."""
    total = run.totals()
    rows = [(KINDS.index(k), a, -total[s, a]) for s, k in enumerate(steps) for a in range(len(book.assets))
            if total[s, a]]
    none = [None] * len(rows)
    return _ledger_table(book, schema, settlement_id, np.full(len(rows), HOUSE_ACCOUNT_ID, np.int64),
                         [a for _, a, _ in rows], none, none, [k for k, _, _ in rows],
                         pa.array([_decimal(u, book.asset_scale[a]) for _, a, u in rows],
                                  type=pa.decimal128(38, book.output_scale)))


def _check_across_parts(keys, table) -> tuple[np.ndarray, np.ndarray]:
    """The book rules that span parts: duplicate positions, one margin mode per account and
    symbol. `keys` are the parts' keys.mode_key(position key, isolated). Returns the distinct
    (wallet, symbol) groups held, sorted, and whether each is isolated."""
    # polars sorts on every core; numpy's unique hashes slowly
    k = pl.Series(np.concatenate(keys) if keys else np.zeros(0, np.int64)).sort().to_numpy()
    keys.clear()
    key, isolated = decode_mode_key(k)
    if len(key) and np.any(key[1:] == key[:-1]):
        raise BookError(table, "position_side", "(account_id, symbol, position_side) listed twice across parts")
    group = group_of(key)
    first = np.r_[True, group[1:] != group[:-1]] if len(group) else np.zeros(0, bool)
    if np.any(~first[1:] & (isolated[1:] != isolated[:-1])):
        raise BookError(table, "margin_mode", "one account holds a symbol both cross and isolated (across parts)")
    return group[first], isolated[first]
