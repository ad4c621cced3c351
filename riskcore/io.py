"""Parquet in and out. A BOOK/ directory holds NAME.parquet or a folder NAME/ of Parquet parts."""

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .book import MODES, SIDES, Book
from .config import DEFAULT_MONEY_SCALE
from .errors import BookError
from .tables import categorical
from .money import to_units, units_to_decimal

REQUIRED = ("instruments", "risk_tiers", "accounts", "positions")
OPTIONAL = ("orders", "marks")
MONEY_COLUMNS = {"accounts": "balance", "positions": "isolated_margin"}


def table_path(book_dir: Path, name: str) -> Path | None:
    for p in (book_dir / f"{name}.parquet", book_dir / name):
        if p.exists():
            return p
    return None


def read_table(path: Path | str) -> pl.DataFrame:
    """One Parquet file or a folder of parts, as polars (errors name the path)."""
    path = Path(path)
    if not path.exists():
        raise BookError(str(path), None, "no such file or folder")
    try:
        if path.is_dir():
            parts = sorted(path.rglob("*.parquet"))
            if not parts:
                raise BookError(str(path), None, "folder holds no .parquet files")
            return pl.from_arrow(pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default"))
        return pl.from_arrow(pq.read_table(path))
    except (pa.ArrowInvalid, OSError) as e:
        raise BookError(str(path), None, f"cannot read as Parquet: {e}") from None


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
        tables[name], names[name] = read_table(path), str(path)
    return Book.from_tables(**tables, money_scale=money_scale, names=names)


def write_parquet(df: pl.DataFrame | pa.Table, path: Path) -> None:
    """Write atomically: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    table = df.to_arrow() if isinstance(df, pl.DataFrame) else df
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def money_column(book: Book, units: np.ndarray, asset_ids: np.ndarray) -> pl.Series:
    """Exact decimal money; one scale per column: the largest of the book's assets."""
    scale = int(book.asset_scale.max()) if len(book.asset_scale) else DEFAULT_MONEY_SCALE
    return pl.from_arrow(units_to_decimal(units, scale, book.asset_scale[asset_ids]))


def positions_table(book: Book, pos) -> pl.DataFrame:
    """Positions (the book's, or any Positions over its ids) as the SPEC §1 table."""
    return pl.DataFrame({
        "account_id": book.wallets.account_id[pos.wallet],
        "symbol": categorical(pos.symbol, book.instruments.symbol),
        "position_side": categorical(pos.side, SIDES),
        "qty": pos.qty, "entry_price": pos.entry_price,
        "margin_mode": categorical(pos.isolated.astype(np.int32), MODES),
        "leverage": pos.leverage,
        "isolated_margin": money_column(book, pos.isolated_margin, book.instruments.settle_asset[pos.symbol])})


def book_tables(book: Book) -> dict[str, pl.DataFrame]:
    """The book as SPEC §1 tables (money as exact decimals; maintenance amounts explicit)."""
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
    )


@contextmanager
def atomic_dir(out: Path | str):
    """Yield a hidden staging folder beside `out`. On success it replaces `out` whole; on any
    failure (or a kill) `out` is untouched. Staging folders left by killed runs are removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_tables(tables: dict[str, pl.DataFrame], out_dir: Path | str, scale: int = DEFAULT_MONEY_SCALE) -> None:
    """Write tables as OUT/NAME.parquet, money as exact decimal (SPEC §7), all or nothing."""
    with atomic_dir(out_dir) as tmp:
        for name, df in tables.items():
            table = df.to_arrow()
            money = MONEY_COLUMNS.get(name)
            if money is not None and not isinstance(df[money].dtype, pl.Decimal):
                table = table.set_column(table.schema.get_field_index(money), money,
                                         units_to_decimal(to_units(df[money], scale, name), scale))
            pq.write_table(table, tmp / f"{name}.parquet")
