"""Parquet in and out. A BOOK/ directory holds NAME.parquet or a folder NAME/ of Parquet parts."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from polars.io.plugins import register_io_source

from .book import MODES, SIDES, Book
from .config import DEFAULT_MONEY_SCALE, PARQUET_COMPRESSION
from .errors import BookError
from .tables import ColumnSource, first_line, arrow_to_frame, categorical, float_text64, needs_normalizing, normalize_arrow
from .money import to_units, units_to_decimal

REQUIRED = ("instruments", "risk_tiers", "accounts", "positions")
OPTIONAL = ("orders", "marks", "settlements")
MONEY_COLUMNS = {"accounts": "balance", "positions": "isolated_margin"}


def table_path(book_dir: Path, name: str) -> Path | None:
    for p in (book_dir / f"{name}.parquet", book_dir / name):
        if p.exists():
            return p
    return None


def read_table(path: Path | str, columns: list[str] | None = None) -> pl.DataFrame:
    """One Parquet file or a folder of parts, as polars (errors name the path); `columns`:
    only those (each present in some part). Parts may differ in compatible types (see
    unify_parts); Arrow types polars cannot take are converted exactly or refused
    (tables.arrow_to_frame)."""
    path = Path(path)
    if not path.exists():
        raise BookError(str(path), None, "no such file or folder")
    if path.is_dir():
        table = unify_parts([(str(p), normalize_arrow(_read_parquet(p, columns), str(p))) for p in _parts(path)])
        return arrow_to_frame(table, str(path))
    with reading(path):
        schema = pq.read_schema(path)
    if not any(needs_normalizing(f.type) for f in schema if columns is None or f.name in columns):
        try:  # polars' own reader: several times faster than pyarrow's plus a conversion
            return pl.read_parquet(path, columns=columns)
        except (Exception, pl.exceptions.PanicException):
            pass  # (invalid text, a type polars lacks): the Arrow door below names what is wrong
    return arrow_to_frame(_read_parquet(path, columns), str(path))


class ColumnsOnRequest(ColumnSource):
    """A Parquet table (file or folder of parts) whose columns are read one at a time, when
    asked for: `table[name]`, with `columns` and `height` (all Book.from_tables asks of the
    positions). Each column is converted and freed before the next is read, so a load
    never holds the whole table beside the book it builds (10M positions: 0.7 GB less)."""

    def __init__(self, path: Path):
        self.path = path
        files = _parts(path) if path.is_dir() else [path]
        metas = []
        for f in files:
            with reading(f):
                metas.append(pq.read_metadata(f))
        # Every column's type checked now, as reading the whole table would (names the file).
        empty = [(str(f), normalize_arrow(m.schema.to_arrow_schema().empty_table(), str(f)))
                 for f, m in zip(files, metas)]
        self.columns = arrow_to_frame(unify_parts(empty) if path.is_dir() else empty[0][1], str(path)).columns
        self.height = sum(m.num_rows for m in metas)

    def __getitem__(self, name: str) -> pl.Series:
        return read_table(self.path, [name])[name]


def _parts(folder: Path) -> list[Path]:
    parts = sorted(folder.rglob("*.parquet"))
    if not parts:
        raise BookError(str(folder), None, "folder holds no .parquet files")
    return parts


def _read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    with reading(path):
        if columns is None:
            return pq.read_table(path)
        present = set(pq.read_schema(path).names)  # a part may lack a column: null there (unify_parts)
        return pq.read_table(path, columns=[c for c in columns if c in present])


@contextmanager
def reading(path: Path | str):
    """Errors while reading `path` as Parquet (corrupt, unreadable) as one BookError naming it."""
    try:
        yield
    except (pa.ArrowException, OSError) as e:
        raise BookError(str(path), None, f"cannot read as Parquet: {first_line(e)}") from None


def unify_parts(parts: list[tuple[str, pa.Table]]) -> pa.Table:
    """Concatenate Parquet parts whose column types may differ compatibly: integer widths
    (to int64, or uint64 when all are unsigned), floats and int+float (to float64; float32
    means the decimal it prints as), decimals and decimal+int (to decimal128(38, the largest
    scale)), text of any Arrow kind (to large_string), timestamps (to the finest unit);
    an all-null column takes the others' type and a column missing from a part is null
    there. Anything else, or a value that does not fit the common type, is refused naming
    the part file and the column."""
    names = list(dict.fromkeys(n for _, t in parts for n in t.schema.names))
    out = [t for _, t in parts]
    for column in names:
        typed = [(i, t.schema.field(column).type) for i, (_, t) in enumerate(parts)
                 if column in t.schema.names and not pa.types.is_null(t.schema.field(column).type)]
        target = _common_type(column, [(parts[i][0], ty) for i, ty in typed])
        for i, (name, t) in enumerate(parts):
            if column not in t.schema.names or t.schema.field(column).type == target:
                continue
            at = t.schema.get_field_index(column)
            try:
                col = float_text64(t.column(at)) if pa.types.is_floating(t.schema.field(column).type) \
                    and pa.types.is_float64(target) else t.column(at)
                out[i] = out[i].set_column(at, column, col.cast(target))
            except pa.ArrowException as e:
                raise BookError(name, column, f"cannot convert {t.schema.field(column).type} to the other parts' "
                                              f"{target}: {first_line(e)}") from None
    try:
        return pa.concat_tables(out, promote_options="default")
    except pa.ArrowException as e:
        raise BookError(parts[0][0], None, f"cannot combine the parts: {first_line(e)}") from None


def _common_type(column: str, typed: list[tuple[str, pa.DataType]]) -> pa.DataType:
    if not typed:
        return pa.null()
    first_name, first = typed[0]
    kinds = {t for _, t in typed}
    if len(kinds) == 1:
        return first
    T = pa.types

    def text(t):
        return T.is_string(t) or T.is_large_string(t) or T.is_string_view(t) or (
            T.is_dictionary(t) and (T.is_string(t.value_type) or T.is_large_string(t.value_type)))
    if all(text(t) for t in kinds):
        return pa.large_string()
    if all(T.is_integer(t) for t in kinds):
        return pa.uint64() if all(T.is_unsigned_integer(t) for t in kinds) else pa.int64()
    if all(T.is_integer(t) or T.is_floating(t) for t in kinds):
        return pa.float64()
    if all(T.is_integer(t) or T.is_decimal(t) for t in kinds):
        return pa.decimal128(38, max(t.scale for t in kinds if T.is_decimal(t)))
    if all(T.is_timestamp(t) for t in kinds) and len({t.tz for t in kinds}) == 1:
        unit = max((t.unit for t in kinds), key=("s", "ms", "us", "ns").index)  # the finest
        return pa.timestamp(unit, first.tz)
    for name, t in typed:
        if t != first:
            raise BookError(name, column, f"type {t} does not match {first} in {first_name}")
    return first


def load_book(book_dir: Path | str, marks: Path | str | None = None,
              money_scale: dict[str, int] | None = None) -> Book:
    """Load and validate BOOK/ (and an optional marks file that replaces BOOK/marks)."""
    book_dir = Path(book_dir)
    if not book_dir.is_dir():
        raise BookError(str(book_dir), None, "not a book directory")
    tables, names = {}, {}
    for name in REQUIRED + OPTIONAL:
        path = Path(marks) if (name == "marks" and marks is not None) else table_path(book_dir, name)
        if path is None:
            if name in REQUIRED:
                raise BookError(str(book_dir / f"{name}.parquet"), None, "missing table")
            continue
        tables[name], names[name] = ColumnsOnRequest(path) if name == "positions" else read_table(path), str(path)
    names.setdefault("marks", str(book_dir / "marks.parquet"))  # named even when absent
    return Book.from_tables(**tables, money_scale=money_scale, names=names)


def is_path(obj) -> bool:
    return isinstance(obj, (str, os.PathLike))


def as_book(book) -> Book:
    """The API takes a book as a Book or as the path of a book folder (load_book)."""
    return book if isinstance(book, Book) else load_book(book)


def as_table(table, name: str) -> tuple[pl.DataFrame | None, str]:
    """The API takes a table (marks, requests, ticks, insurance fund) as polars or pyarrow, or
    as the path of a Parquet file or folder; returns it and what errors call it."""
    if table is None:
        return None, name
    if is_path(table):
        return read_table(table), str(table)
    return arrow_to_frame(table, name) if not isinstance(table, pl.DataFrame) else table, name


@contextmanager
def writing(path: Path | str):
    """Errors while writing `path` (a full disk, no permission) as one BookError naming it.
    polars' writers report the system's error inside a ComputeError."""
    try:
        yield
    except (OSError, pa.ArrowException, pl.exceptions.ComputeError) as e:
        if isinstance(e, BrokenPipeError):
            raise
        reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
        raise BookError(str(path), None, f"cannot write: {reason.rpartition(POLARS_IO_ERROR)[2]}") from None


POLARS_IO_ERROR = "underlying IO error: "  # what precedes the system's own words in polars' message


def write_parquet(df: pl.DataFrame, path: Path) -> None:
    """One Parquet file (into a command's staging folder: see output.output_dir), written as
    config.PARQUET_COMPRESSION says."""
    with writing(path):
        df.write_parquet(path, compression=PARQUET_COMPRESSION)


def write_parquet_parts(parts: Iterator[pl.DataFrame], path: Path) -> None:
    """One Parquet file from frames made one after another, never all in memory at once:
    polars' streaming sink pulls the next part while it encodes the last (frames must share
    one schema; at least one, possibly empty). Written as write_parquet writes."""
    first = next(parts)

    def source(with_columns, predicate, n_rows, batch_size):  # a plain sink pushes nothing down
        for frame in chain([first], parts):
            yield frame if with_columns is None else frame.select(with_columns)
    with writing(path):
        register_io_source(source, schema=first.schema).sink_parquet(path, compression=PARQUET_COMPRESSION)


def money_column(book: Book, units: np.ndarray, asset_ids: np.ndarray) -> pl.Series:
    """Exact decimal money; one scale per column: the largest of the book's assets."""
    return pl.from_arrow(units_to_decimal(units, book.output_scale, book.asset_scale[asset_ids]))


def positions_table(book: Book, pos) -> pl.DataFrame:
    """Positions (the book's, or any Positions over its ids) as the positions table (model §2.4)."""
    return pl.DataFrame({
        "account_id": book.wallets.account_id[pos.wallet],
        "symbol": categorical(pos.symbol, book.instruments.symbol),
        "position_side": categorical(pos.side, SIDES),
        "qty": pos.qty, "entry_price": pos.entry_price,
        "margin_mode": categorical(pos.isolated.astype(np.int32), MODES),
        "leverage": pos.leverage,
        "isolated_margin": money_column(book, pos.isolated_margin, book.instruments.settle_asset[pos.symbol])})


def book_tables(book: Book) -> dict[str, pl.DataFrame]:
    """The book as its tables (model §2; money as exact decimals, maintenance amounts explicit),
    with the settlements applied to it, so a chain of commands never applies one twice."""
    inst, wal, ords = book.instruments, book.wallets, book.orders
    symbols = np.array(inst.symbol, dtype=object)
    assets = np.array(book.assets, dtype=object)
    tier_symbol = np.repeat(np.arange(len(inst)), np.diff(inst.tier_start))
    given = np.isfinite(inst.tier_max_leverage)  # drops the open tier of untiered fraction instruments
    held = ~np.isnan(book.mark)
    return dict(
        instruments=pl.DataFrame({
            "symbol": inst.symbol, "contract_type": np.where(inst.inverse, "inverse", "linear"),
            "settle_asset": assets[inst.settle_asset].tolist(), "face_value": inst.face_value,
            "taker_fee_rate": inst.taker_fee_rate, "liquidation_fee_rate": inst.liquidation_fee_rate,
            "mm_im_fraction": pl.Series(inst.mm_im_fraction, nan_to_null=True)}),
        risk_tiers=pl.DataFrame({
            "symbol": symbols[tier_symbol[given]].tolist(), "notional_floor": inst.tier_floor[given],
            "mmr": inst.tier_mmr[given], "max_leverage": inst.tier_max_leverage[given],
            "maintenance_amount": inst.tier_cum[given]}),
        accounts=pl.DataFrame({"account_id": wal.account_id, "asset": assets[wal.asset].tolist(),
                               "balance": money_column(book, wal.balance, wal.asset)}),
        positions=positions_table(book, book.positions),
        orders=pl.DataFrame({
            "account_id": wal.account_id[ords.wallet], "symbol": symbols[ords.symbol].tolist(),
            "qty": ords.qty, "price": ords.price, "leverage": ords.leverage,
            "margin_mode": np.array(MODES, dtype=object)[ords.isolated.astype(int)].tolist()},
            schema_overrides={"symbol": pl.String, "margin_mode": pl.String}),
        marks=pl.DataFrame({"symbol": symbols[held].tolist(), "mark_price": book.mark[held],
                            "funding_rate": pl.Series(book.funding_rate[held], nan_to_null=True)}),
        settlements=book.settlements,
    )


def write_tables(tables: dict[str, pl.DataFrame], folder: Path | str, scale: int = DEFAULT_MONEY_SCALE) -> None:
    """Write tables as FOLDER/NAME.parquet, money as exact decimal (model §3). Not atomic by
    itself: commands write into the staging folder of output.output_dir."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        money = MONEY_COLUMNS.get(name)
        if money is not None and not isinstance(df[money].dtype, pl.Decimal):
            df = df.with_columns(pl.from_arrow(units_to_decimal(to_units(df[money], scale, name), scale)).alias(money))
        write_parquet(df, folder / f"{name}.parquet")
