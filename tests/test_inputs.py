"""Every input a user may hand riskcore is converted exactly or refused with one line naming
the file (or table), the column and the rows: through the API a BookError, through the CLI
`riskcore: error: ...` on stderr and exit code 2. Never a traceback, a panic, an internal
error (exit 1) or a silently chosen value."""

import contextlib
import errno
import math
import os
import subprocess
import sys
from decimal import Decimal, localcontext
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

import riskcore as rc
from riskcore import BookError
from riskcore.cli import main
from riskcore.engine import Engine
from riskcore.io import write_tables
from riskcore.money import to_units
from riskcore.ops import apply_requests
from riskcore.tables import as_frame

from naive.money import reference_units

D = Decimal


def tables():
    """A tiny valid book (model §2) as pyarrow tables."""
    return dict(
        instruments=pa.table({"symbol": ["BTCUSDT", "ETHUSDT"], "contract_type": ["linear", "linear"],
                              "face_value": [1.0, 1.0], "taker_fee_rate": [0.0004, 0.0004]}),
        risk_tiers=pa.table({"symbol": ["BTCUSDT", "BTCUSDT", "ETHUSDT"], "notional_floor": [0.0, 5e4, 0.0],
                             "mmr": [0.004, 0.005, 0.005], "max_leverage": [125.0, 100.0, 100.0]}),
        accounts=pa.table({"account_id": [1, 2], "balance": [1000.0, 50.0]}),
        positions=pa.table({"account_id": [1, 2, 2], "symbol": ["BTCUSDT", "BTCUSDT", "ETHUSDT"],
                            "qty": [0.1, -0.01, 1.0], "entry_price": [60000.0, 61000.0, 3000.0],
                            "margin_mode": ["cross", "isolated", "cross"], "leverage": [10.0, 20.0, 5.0],
                            "isolated_margin": [0.0, 40.0, 0.0]}),
        orders=pa.table({"account_id": [1], "symbol": ["BTCUSDT"], "qty": [0.05], "price": [59000.0],
                         "leverage": [10.0], "margin_mode": ["cross"]}),
        marks=pa.table({"symbol": ["BTCUSDT", "ETHUSDT"], "mark_price": [60500.0, 3050.0],
                        "funding_rate": [0.0001, 0.0001]}),
    )


def write_book(path: Path, **override) -> Path:
    """Write the tiny book (tables replaced by `override`: a pyarrow/polars table, or a dict
    of part name -> table for a folder of parts) as BOOK/NAME.parquet."""
    path.mkdir(parents=True, exist_ok=True)
    for name, t in {**tables(), **override}.items():
        if isinstance(t, dict):
            (path / name).mkdir()
            for part, tt in t.items():
                pq.write_table(_arrow(tt), path / name / f"{part}.parquet")
        else:
            pq.write_table(_arrow(t), path / f"{name}.parquet")
    return path


def _arrow(t):
    return t.to_arrow() if isinstance(t, pl.DataFrame) else t


def with_column(t: pa.Table, name: str, arr) -> pa.Table:
    arr = arr if isinstance(arr, (pa.Array, pa.ChunkedArray)) else pa.array(arr)
    if name in t.schema.names:
        return t.set_column(t.schema.get_field_index(name), name, arr)
    return t.append_column(name, arr)


def cli(capsys, *argv) -> tuple[int, str]:
    """Run the CLI; return (exit code, the one stderr line). Asserts stderr is one line (a
    first-run compile notice aside)."""
    code = main([str(a) for a in argv])
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("riskcore: compiling")]
    assert len(err) <= 1, err
    return code, err[0] if err else ""


def refused(capsys, *argv, names=(), rows=None) -> str:
    """The CLI refuses with exit 2 and one line `riskcore: error: ...` naming every item of
    `names` (file, column) and, when given, the rows."""
    code, line = cli(capsys, *argv)
    assert code == 2, line
    assert line.startswith("riskcore: error: "), line
    for n in names:
        assert str(n) in line, (n, line)
    if rows is not None:
        assert f"(rows {', '.join(map(str, rows))}; {len(rows)} in all)" in line, line
    return line


def api_refuses(fn, table, column, rows=None, words=""):
    with pytest.raises(BookError) as e:
        fn()
    err = e.value
    assert str(table) in err.table and err.column == column, str(err)
    if rows is not None:
        assert err.rows is not None and list(err.rows) == rows, str(err)
    assert words in str(err), str(err)
    return err


def load(**override):
    return rc.Book.from_tables(**{**tables(), **override})


# -- 1. money: exact units for every input type -----------------------------------------------

def test_integer_balance_is_exact(tmp_path, capsys):
    accounts = pa.table({"account_id": [1, 2], "balance": pa.array([50_000_000_001, -7], pa.int64())})
    assert load(accounts=accounts).wallets.balance.tolist() == [5_000_000_000_100_000_000, -700_000_000]
    for t in (pa.uint64(), pa.uint8(), pa.int16(), pa.int32()):
        accounts = pa.table({"account_id": [1, 2], "balance": pa.array([100, 3], t)})
        assert load(accounts=accounts).wallets.balance.tolist() == [100 * 10**8, 3 * 10**8]
    book = write_book(tmp_path / "b", accounts=pa.table({"account_id": [1, 2],
                                                         "balance": pa.array([50_000_000_001, 1], pa.int64())}))
    assert rc.load_book(book).wallets.balance[0] == 5_000_000_000_100_000_000


@pytest.mark.parametrize("arr", [pa.array([1, 92_233_720_369], pa.int64()), pa.array([1, 2**64 - 1], pa.uint64()),
                                 pa.array([1, -92_233_720_369], pa.int64())])
def test_integer_balance_too_large_refused(tmp_path, capsys, arr):
    accounts = pa.table({"account_id": [1, 2], "balance": arr})
    api_refuses(lambda: load(accounts=accounts), "accounts", "balance", [1], "too large for 64-bit")
    book = write_book(tmp_path / "b", accounts=accounts)
    refused(capsys, "scan", book, names=(book / "accounts.parquet", "'balance'", "too large"), rows=[1])


def test_float32_money_means_the_decimal_it_prints_as():
    accounts = pa.table({"account_id": [1, 2], "balance": pa.array([0.1, 1234.5677], pa.float32())})
    assert load(accounts=accounts).wallets.balance.tolist() == [10_000_000, 123_456_770_000]
    positions = with_column(tables()["positions"], "isolated_margin", pa.array([0.0, 40.1, 0.0], pa.float32()))
    assert load(positions=positions).positions.isolated_margin.tolist() == [0, 4_010_000_000, 0]


def test_big_float_balance_is_exact():
    # 2**52 < 12345678901.123457·10^8: the float product is 256 units coarse; the decimal rule is not
    accounts = pa.table({"account_id": [1, 2], "balance": [12345678901.123457, 92233720368.54774]})
    assert load(accounts=accounts).wallets.balance.tolist() == [1_234_567_890_112_345_700, 9_223_372_036_854_774_000]


def test_text_money_refused(tmp_path, capsys):
    accounts = pa.table({"account_id": [1, 2], "balance": ["1000", "50"]})
    api_refuses(lambda: load(accounts=accounts), "accounts", "balance", words="expected a number or decimal")
    book = write_book(tmp_path / "b", accounts=accounts)
    refused(capsys, "scan", book, names=(book / "accounts.parquet", "'balance'", "expected a number"))


INT_TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]


@st.composite
def money_inputs(draw):
    """(pyarrow array of one value, the Decimal it means)."""
    kind = draw(st.sampled_from(["int", "float64", "float32", "decimal128", "decimal256"]))
    if kind == "int":
        t = draw(st.sampled_from(INT_TYPES))
        lo, hi = (0, 2**t.bit_width - 1) if pa.types.is_unsigned_integer(t) else \
            (-(2**(t.bit_width - 1)), 2**(t.bit_width - 1) - 1)
        v = draw(st.one_of(st.integers(lo, hi), st.integers(max(lo, -10**12), min(hi, 10**12))))
        return pa.array([v], t), D(v)
    if kind == "float64":
        v = draw(st.one_of(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e20, max_value=1e20),
                           st.decimals(-10**12, 10**12, places=draw(st.integers(0, 12))).map(float)))
        return pa.array([v], pa.float64()), D(repr(v))
    if kind == "float32":
        v = np.float32(draw(st.floats(allow_nan=False, allow_infinity=False, width=32)))
        return pa.array([v], pa.float32()), D(str(v))
    top = 38 if kind == "decimal128" else 76
    places = draw(st.integers(0, top))
    digits = draw(st.integers(1, top))
    n = draw(st.integers(-(10**digits - 1), 10**digits - 1))
    precision = draw(st.integers(max(len(str(abs(n))), places, 1), top))
    v = D(f"{n}e{-places}")  # exact (scaleb would round to the context's 28 digits)
    return pa.array([str(v)]).cast((pa.decimal128 if kind == "decimal128" else pa.decimal256)(precision, places)), v


@given(money_inputs(), st.integers(0, 18))
def test_money_conversion_matches_decimal_reference(arg, scale):
    arr, value = arg

    def units():  # through the one Arrow door, as a user's table or Parquet file goes
        return to_units(as_frame(pa.table({"balance": arr}), "t")["balance"], scale, "t").tolist()
    if pa.types.is_decimal256(arr.type) and abs(value) >= 10**19 and not fits_decimal128(value, arr.type):
        with pytest.raises(BookError, match="10\\^19"):
            units()
        return
    expected = reference_units(value, scale)
    if expected is None:
        with pytest.raises(BookError, match="too large for 64-bit fixed point"):
            units()
    else:
        assert units() == [expected], (arr, value)


def fits_decimal128(value: Decimal, t) -> bool:
    """Whether the lossless decimal256 -> decimal128(38, scale) narrowing applies."""
    with localcontext() as ctx:
        ctx.prec = 200
        return t.scale <= 38 and abs(value.scaleb(t.scale)) < 10**38


# -- 2. Arrow types polars cannot take ---------------------------------------------------------

def test_decimal256_money_and_numbers_load_exactly(tmp_path, capsys):
    accounts = pa.table({"account_id": [1, 2], "balance": pa.array([D("1000.12345678"), D("50")], pa.decimal256(40, 8))})
    inst = with_column(tables()["instruments"], "face_value", pa.array([D("1"), D("0.5")], pa.decimal256(50, 2)))
    book = load(accounts=accounts, instruments=inst)
    assert book.wallets.balance.tolist() == [100_012_345_678, 5_000_000_000]
    assert book.instruments.face_value.tolist() == [1.0, 0.5]
    # scale beyond decimal128: exact to 19 places (round-to-odd), then half-even to the asset's 8
    fine = pa.array([D("0.000000005" + "0" * 40), D("0.000000015" + "0" * 39 + "1")], pa.decimal256(76, 50))
    assert load(accounts=pa.table({"account_id": [1, 2], "balance": fine})).wallets.balance.tolist() == [0, 2]
    path = write_book(tmp_path / "b", accounts=accounts)
    assert cli(capsys, "scan", path) == (0, "")


def test_decimal256_too_large_refused(tmp_path, capsys):
    big = pa.array([D("1"), D("1" + "0" * 19)], pa.decimal256(76, 30))
    accounts = pa.table({"account_id": [1, 2], "balance": big})
    api_refuses(lambda: load(accounts=accounts), "accounts", "balance", [1], "10^19")
    book = write_book(tmp_path / "b", accounts=accounts)
    refused(capsys, "scan", book, names=(book / "accounts.parquet", "'balance'"), rows=[1])


def test_invalid_utf8_text_in_parquet_refused_naming_the_column(tmp_path):
    """polars' fast reader refuses it without naming the column; the Arrow door names it."""
    from riskcore.io import read_table
    bad = pa.array([b"BTCUSDT", b"\xff\xfe"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"symbol": bad}), tmp_path / "marks.parquet")
    with pytest.raises(BookError) as e:
        read_table(tmp_path / "marks.parquet")
    assert e.value.column == "symbol" and "not valid UTF-8" in str(e.value)


def test_text_kinds_load(tmp_path, capsys):
    pos = tables()["positions"]
    pos = with_column(pos, "symbol", pa.array(["BTCUSDT", "BTCUSDT", "ETHUSDT"], pa.large_string()))
    pos = with_column(pos, "margin_mode", pa.array(["cross", "isolated", "cross"]).dictionary_encode()
                      .cast(pa.dictionary(pa.int8(), pa.large_string())))
    assert len(load(positions=pos).positions) == 3
    assert cli(capsys, "scan", write_book(tmp_path / "b", positions=pos)) == (0, "")


@pytest.mark.parametrize("arr,words", [
    (pa.array([None, None, None], pa.month_day_nano_interval()), "month_day_nano_interval"),
    (pa.array([[D("1")], [D("2")], []], pa.list_(pa.decimal256(40, 2))), "decimal256"),
])
def test_unreadable_arrow_type_refused(tmp_path, capsys, arr, words):
    pos = with_column(tables()["positions"], "note", arr)
    api_refuses(lambda: load(positions=pos), "positions", "note", words=words)
    if pa.types.is_list(arr.type):  # Parquet cannot hold an interval
        book = write_book(tmp_path / "b", positions=pos)
        refused(capsys, "scan", book, names=(book / "positions.parquet", "'note'", words))


@pytest.mark.parametrize("column,arr,words", [
    ("qty", pa.array(["0.1", "1", "2"]), "expected numbers, got String"),
    ("qty", pa.array([None, None, None], pa.null()), "null value"),
    ("qty", pa.array([[0.1], [1.0], [2.0]]), "expected numbers, got List"),
    ("account_id", pa.array([1.0, 2.0, 2.0]), "expected integers"),
    ("entry_price", pa.array([True, False, True]), "expected numbers, got Boolean"),
])
def test_wrong_column_types_refused(tmp_path, capsys, column, arr, words):
    pos = with_column(tables()["positions"], column, arr)
    api_refuses(lambda: load(positions=pos), "positions", column, words=words)
    book = write_book(tmp_path / "b", positions=pos)
    refused(capsys, "scan", book, names=(book / "positions.parquet", f"'{column}'", words))


def test_duplicate_column_and_empty_tables(tmp_path, capsys):
    dup = pa.Table.from_arrays([pa.array([1, 2]), pa.array([1.0, 2.0]), pa.array([3.0, 4.0])],
                               names=["account_id", "balance", "balance"])
    api_refuses(lambda: load(accounts=dup), "accounts", "balance", words="more than once")
    inst = tables()["instruments"].slice(0, 0)
    api_refuses(lambda: load(instruments=inst), "risk_tiers", "symbol", words="unknown symbol")
    book = write_book(tmp_path / "b", instruments=inst)
    refused(capsys, "scan", book, names=(book / "risk_tiers.parquet", "'symbol'", "unknown symbol"))


# -- 3. folders of parts -----------------------------------------------------------------------

def test_parts_with_compatible_types_are_unified(tmp_path, capsys):
    pos = tables()["positions"]
    p0 = with_column(pos.slice(0, 2), "qty", pa.array([0.1, -0.01], pa.float32()))
    p1 = with_column(pos.slice(2), "qty", pa.array([1], pa.int64()))
    p1 = with_column(p1, "symbol", pa.array(["ETHUSDT"]).dictionary_encode())
    book = write_book(tmp_path / "b", positions={"part-0": p0, "part-1": p1})
    assert rc.load_book(book).positions.qty.tolist() == [0.1, -0.01, 1.0]  # float32 0.1 means 0.1
    assert cli(capsys, "scan", book) == (0, "")


def test_parts_with_incompatible_types_refused(tmp_path, capsys):
    a0 = pa.table({"account_id": [1], "balance": pa.array([D("1000")], pa.decimal128(20, 2))})
    a1 = pa.table({"account_id": [2], "balance": [50.0]})
    book = write_book(tmp_path / "b", accounts={"part-0": a0, "part-1": a1})
    refused(capsys, "scan", book, names=(book / "accounts" / "part-1.parquet", "'balance'", "part-0.parquet"))


def test_part_value_not_fitting_the_common_type_refused(tmp_path, capsys):
    a0 = pa.table({"account_id": pa.array([1], pa.int32()), "balance": [1000.0]})
    a1 = pa.table({"account_id": pa.array([2**63 + 1], pa.uint64()), "balance": [50.0]})
    book = write_book(tmp_path / "b", accounts={"part-0": a0, "part-1": a1})
    refused(capsys, "scan", book, names=(book / "accounts" / "part-1.parquet", "'account_id'"))


def test_unreadable_part_refused(tmp_path, capsys):
    book = write_book(tmp_path / "b", accounts={"part-0": tables()["accounts"]})
    (book / "accounts" / "part-1.parquet").write_bytes(b"PAR1 not parquet")
    refused(capsys, "scan", book, names=(book / "accounts" / "part-1.parquet", "cannot read as Parquet"))


def test_positions_are_read_one_column_at_a_time_into_the_same_book(tmp_path, monkeypatch):
    """load_book reads the positions (its one big table) a column at a time, so it never
    holds the whole table beside the book; the book is the one the whole table gives."""
    from riskcore import io
    pos = tables()["positions"]
    book = write_book(tmp_path / "b", positions={"part-0": pos.slice(0, 2), "part-1": pos.slice(2)})
    asked, read_table = [], io.read_table

    def recording(path, columns=None):
        asked.append((Path(path).name, columns))
        return read_table(path, columns)
    monkeypatch.setattr(io, "read_table", recording)
    loaded = rc.load_book(book)
    assert all(len(columns) == 1 for name, columns in asked if name == "positions")
    assert {columns[0] for name, columns in asked if name == "positions"} >= {"qty", "entry_price", "leverage"}
    whole = rc.Book.from_tables(**{name: t for name, t in tables().items()})
    for column in ("wallet", "symbol", "side", "qty", "entry_price", "leverage", "isolated", "isolated_margin"):
        np.testing.assert_array_equal(getattr(loaded.positions, column), getattr(whole.positions, column))


def test_positions_parts_with_incompatible_types_refused_before_reading(tmp_path, capsys):
    pos = tables()["positions"]
    p1 = with_column(pos.slice(2), "qty", pa.array(["1"]))
    book = write_book(tmp_path / "b", positions={"part-0": pos.slice(0, 2), "part-1": p1})
    refused(capsys, "scan", book, names=(book / "positions" / "part-1.parquet", "'qty'", "part-0.parquet"))


# -- 4. 5. account ids and maintenance amounts -------------------------------------------------

def test_uint64_account_id_above_int64_refused(tmp_path, capsys):
    accounts = pa.table({"account_id": pa.array([1, 2**63 + 5], pa.uint64()), "balance": [1000.0, 50.0]})
    api_refuses(lambda: load(accounts=accounts), "accounts", "account_id", [1], "64-bit signed range")
    book = write_book(tmp_path / "b", accounts=accounts)
    refused(capsys, "scan", book, names=(book / "accounts.parquet", "'account_id'"), rows=[1])
    ok = pa.table({"account_id": pa.array([1, 2], pa.uint64()), "balance": [1000.0, 50.0]})
    assert load(accounts=ok).wallets.account_id.tolist() == [1, 2]


def test_negative_maintenance_amount_refused(tmp_path, capsys):
    tiers = with_column(tables()["risk_tiers"], "maintenance_amount", [0.0, -50.0, None])
    api_refuses(lambda: load(risk_tiers=tiers), "risk_tiers", "maintenance_amount", [1], ">= 0")
    book = write_book(tmp_path / "b", risk_tiers=tiers)
    refused(capsys, "scan", book, names=(book / "risk_tiers.parquet", "'maintenance_amount'"), rows=[1])


# -- 6. requests ---------------------------------------------------------------------------

def test_requests_without_value_refused(tmp_path, capsys):
    req = pl.DataFrame({"request_id": [1, 2], "account_id": [2, 1], "op": ["set_margin_mode", "transfer_in"],
                        "symbol": ["ETHUSDT", None], "mode": ["isolated", None]})
    api_refuses(lambda: apply_requests(load(), req), "requests", "value", [1], "missing column")
    book = write_book(tmp_path / "b")
    req.write_parquet(tmp_path / "req.parquet")
    refused(capsys, "apply", book, tmp_path / "req.parquet", "--out", tmp_path / "o",
            names=(tmp_path / "req.parquet", "'value'", "missing column"), rows=[1])
    assert not (tmp_path / "o").exists()
    only_modes = req.head(1)  # no op needs a value: the table is fine without the column
    assert apply_requests(load(), only_modes)[1]["reason"].to_list() == ["open_position"]  # judged, not refused


def test_request_values_in_decimal_are_exact():
    req = pl.DataFrame({"request_id": [1], "account_id": [1], "op": ["transfer_in"],
                        "value": pl.Series([D("12345678901.12345679")], dtype=pl.Decimal(38, 8))})
    new, out = apply_requests(load(), req)
    assert out["accepted"].to_list() == [True]
    assert new.wallets.balance[0] == 1000 * 10**8 + 1_234_567_890_112_345_679


# -- 7. insurance fund ---------------------------------------------------------------------

def _ticks(path: Path, **columns) -> Path:
    cols = {"ts": [1, 2], "symbol": ["BTCUSDT", "BTCUSDT"], "mark_price": [60100.0, 60200.0], **columns}
    pq.write_table(pa.table(cols), path)
    return path


@pytest.mark.parametrize("fund,column,rows", [
    (pa.table({"asset": ["USDT"], "amount": [5.0]}), "balance", None),
    (pa.table({"asset": ["USDT", "USDT"], "balance": [5.0, 7.0]}), "asset", [0, 1]),
    (pa.table({"asset": ["USDT"], "balance": ["5"]}), "balance", None),
])
def test_insurance_fund_refused_naming_the_file(tmp_path, capsys, fund, column, rows):
    book = write_book(tmp_path / "b")
    pq.write_table(fund, tmp_path / "fund.parquet")
    refused(capsys, "replay", book, _ticks(tmp_path / "t.parquet"), "--out", tmp_path / "o", "--liquidate",
            "--insurance-fund", tmp_path / "fund.parquet", names=(tmp_path / "fund.parquet", f"'{column}'"), rows=rows)
    api_refuses(lambda: Engine(load(), insurance_fund=fund, fund_name="f.parquet"), "f.parquet", column, rows)


# -- 8. marks files ------------------------------------------------------------------------

def test_marks_errors_name_the_file(tmp_path, capsys):
    book = write_book(tmp_path / "b")
    marks = tmp_path / "m.parquet"
    pq.write_table(pa.table({"symbol": ["ETHUSDT"], "mark_price": [3000.0], "funding_rate": [0.0001]}), marks)
    refused(capsys, "scan", book, "--marks", marks, names=(marks, "'mark_price'", "BTCUSDT"))
    refused(capsys, "settle", book, "--marks", marks, "--id", "s1", "--out", tmp_path / "o",
            names=(marks, "'mark_price'", "BTCUSDT"))
    pq.write_table(pa.table({"symbol": ["BTCUSDT", "ETHUSDT"], "mark_price": ["1", "2"]}), marks)
    refused(capsys, "scan", book, "--marks", marks, names=(marks, "'mark_price'", "expected numbers"))
    good = tmp_path / "good.parquet"
    pq.write_table(tables()["marks"], good)
    funding = tmp_path / "f.parquet"
    pq.write_table(pa.table({"symbol": ["BTCUSDT", "XRPUSDT"], "funding_rate": [0.0001, 0.0002]}), funding)
    refused(capsys, "settle", book, "--marks", good, "--funding", funding, "--id", "s1", "--out", tmp_path / "o",
            names=(funding, "'symbol'", "XRPUSDT"), rows=[1])
    pq.write_table(pa.table({"symbol": ["ETHUSDT"], "funding_rate": [0.0001]}), funding)
    refused(capsys, "settle", book, "--marks", good, "--funding", funding, "--id", "s1", "--out", tmp_path / "o",
            names=(funding, "'funding_rate'", "BTCUSDT"))
    (tmp_path / "b" / "marks.parquet").unlink()  # the book's own marks: none at all
    refused(capsys, "scan", book, names=(book / "marks.parquet", "'mark_price'"))
    assert not (tmp_path / "o").exists()


# -- 9. tick files -------------------------------------------------------------------------

@pytest.mark.parametrize("columns,column,rows", [
    (dict(symbol=["BTCUSDT", None]), "symbol", [1]),
    (dict(mark_price=["60100", "60200"]), "mark_price", None),
    (dict(mark_price=[60100.0, None]), "mark_price", [1]),
    (dict(ts=[1, None]), "ts", [1]),
    (dict(ts=[1.0, math.nan]), "ts", [1]),
    (dict(ts=["a", "b"]), "ts", None),
    (dict(ts=[[1], [2]]), "ts", None),
])
def test_bad_tick_files_refused_before_anything_runs(tmp_path, capsys, columns, column, rows):
    book = write_book(tmp_path / "b")
    ticks = _ticks(tmp_path / "t.parquet", **columns)
    refused(capsys, "replay", book, ticks, "--out", tmp_path / "o", names=(ticks, f"'{column}'"), rows=rows)
    assert not (tmp_path / "o").exists()


def test_missing_tick_column_refused(tmp_path, capsys):
    book = write_book(tmp_path / "b")
    ticks = tmp_path / "t.parquet"
    pq.write_table(pa.table({"ts": [1], "symbol": ["BTCUSDT"]}), ticks)
    refused(capsys, "replay", book, ticks, "--out", tmp_path / "o", names=(ticks, "'mark_price'", "missing column"))


# -- 10. settle ----------------------------------------------------------------------------

@pytest.mark.parametrize("rows", ["0", "-5"])
def test_settle_part_rows_must_be_positive(tmp_path, capsys, rows):
    book = write_book(tmp_path / "b")
    pq.write_table(tables()["marks"], tmp_path / "m.parquet")
    refused(capsys, "settle", book, "--marks", tmp_path / "m.parquet", "--id", "s1", "--out", tmp_path / "o",
            "--part-rows", rows, names=("part_rows", "positive", rows))


@pytest.mark.parametrize("column,value,words", [
    ("symbol", ["XRPUSDT"], "unknown symbol"), ("qty", [0.0], "non-zero"), ("price", [-1.0], "positive"),
    ("account_id", [9], "no accounts row"), ("margin_mode", ["isolated"], "differs from the account's position"),
])
def test_settle_validates_orders(tmp_path, capsys, column, value, words):
    orders = with_column(tables()["orders"], column, value)
    book = write_book(tmp_path / "b", orders=orders,
                      positions={"part-0": tables()["positions"].slice(1), "part-1": tables()["positions"].slice(0, 1)})
    pq.write_table(tables()["marks"], tmp_path / "m.parquet")
    refused(capsys, "settle", book, "--marks", tmp_path / "m.parquet", "--id", "s1", "--out", tmp_path / "o",
            names=(book / "orders.parquet", f"'{column}'", words), rows=[0])
    assert not (tmp_path / "o").exists()


def test_settle_keeps_valid_orders_and_reads_decimal256_parts(tmp_path, capsys):
    pos = with_column(tables()["positions"], "isolated_margin", pa.array([D(0), D("40.5"), D(0)], pa.decimal256(40, 4)))
    book = write_book(tmp_path / "b", positions={"part-0": pos})
    pq.write_table(tables()["marks"], tmp_path / "m.parquet")
    code, line = cli(capsys, "settle", book, "--marks", tmp_path / "m.parquet", "--id", "s1", "--out", tmp_path / "o",
                     "--steps", "realize")
    assert (code, line) == (0, "")
    settled = rc.load_book(tmp_path / "o")
    assert len(settled.orders) == 1 and sorted(settled.positions.isolated_margin.tolist()) == [0, 0, 4_550_000_000]  # 40.5 + realized 5


# -- 11. writing: full disk, closed pipe -----------------------------------------------------

def test_full_disk_names_the_file(tmp_path, capsys, monkeypatch):
    book = write_book(tmp_path / "b")

    req = tmp_path / "req.parquet"
    pl.DataFrame({"request_id": [1], "account_id": [1], "op": ["transfer_in"], "value": [1.0]}).write_parquet(req)

    def full(*args, **kwargs):  # what polars raises on ENOSPC (seen on a full tmpfs)
        raise pl.exceptions.ComputeError("parquet: File out of specification: underlying IO error: "
                                         "No space left on device (os error 28)")
    monkeypatch.setattr(pl.DataFrame, "write_parquet", full)
    monkeypatch.setattr(pl.LazyFrame, "sink_parquet", full)  # scan --out streams its positions
    refused(capsys, "scan", book, "--out", tmp_path / "o",
            names=(tmp_path / "o" / "positions.parquet", "No space left on device"))
    refused(capsys, "apply", book, req, "--out", tmp_path / "o2", names=(tmp_path / "o2", "No space left on device"))
    assert not (tmp_path / "o2").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs: a real full disk (needs root, as CI has; skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root): the faked full disk above still runs")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)  # lazy: even if a test left a file open


def test_a_real_full_disk_names_the_file_and_leaves_nothing(tmp_path, small_disk, capsys):
    from riskcore.gen import generate
    book = tmp_path / "b"
    write_tables(generate(1_000, 3_000, 20, seed=1), book)
    for command in (["scan", book], ["settle", book, "--marks", book / "marks.parquet", "--id", "s1"]):
        refused(capsys, *command, "--out", small_disk / "o", names=(small_disk / "o", "No space left on device"))
        assert not any(small_disk.iterdir())  # the staging folder is gone too
        assert not [name for name in _open_files() if name.startswith(str(small_disk))]  # nor left open


def _open_files() -> list[str]:
    """What this process has open (a deleted file too: 'PATH (deleted)')."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
    return names


def test_broken_pipe_exits_quietly(tmp_path, capsys, monkeypatch):
    book = write_book(tmp_path / "b")

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["scan", str(book)]) == 141
    assert not [line for line in capsys.readouterr().err.splitlines() if not line.startswith("riskcore: compiling")]


def test_broken_pipe_real_pipe(tmp_path):
    book = write_book(tmp_path / "b")
    read, write = os.pipe()
    os.close(read)  # `| head` that has already gone
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.run([sys.executable, "-m", "riskcore", "scan", str(book)], stdout=write, stderr=subprocess.PIPE,
                       env=env, text=True)
    os.close(write)
    err = [line for line in p.stderr.splitlines() if not line.startswith("riskcore: compiling")]
    assert p.returncode == 141 and err == [], p.stderr


@pytest.mark.parametrize("steps,words", [("funding,funding", "named twice"), ("realize,funding,realize", "named twice")])
def test_settle_refuses_a_step_named_twice(tmp_path, capsys, steps, words):
    book = write_book(tmp_path / "b")
    pq.write_table(tables()["marks"], tmp_path / "m.parquet")
    refused(capsys, "settle", book, "--marks", tmp_path / "m.parquet", "--id", "s1", "--out", tmp_path / "o",
            "--steps", steps, names=("steps", words))
    refused(capsys, "settle", book, "--marks", tmp_path / "m.parquet", "--id", " ", "--out", tmp_path / "o",
            names=("settlement_id", "non-empty"))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv,words", [
    (["gen", "--seed", "-1"], "--seed"), (["gen", "--seed", str(10**23)], "--seed"), (["gen", "--ticks", "-3"], "--ticks"),
    (["gen", "--accounts", "0"], "--accounts"), (["gen", "--symbols", "x"], "--symbols"), (["bench", "--positions", "0"],
                                                                                          "--positions"),
])
def test_bad_command_line_numbers_are_one_line(tmp_path, capsys, argv, words):
    with pytest.raises(SystemExit) as e:
        main(argv + ([str(tmp_path / "o")] if argv[0] == "gen" else []))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("riskcore: error: ") and words in err[0], err


def test_settlement_amount_beyond_64_bits_names_the_positions_file_and_rows(tmp_path, capsys):
    positions = tables()["positions"]
    huge = [1e300] + positions["entry_price"].to_pylist()[1:]
    book = write_book(tmp_path / "b", positions=with_column(positions, "entry_price", huge))
    pq.write_table(tables()["marks"], tmp_path / "m.parquet")
    line = refused(capsys, "settle", book, "--marks", tmp_path / "m.parquet", "--id", "s1", "--out", tmp_path / "o",
                   names=(book / "positions.parquet", "exceeds 64-bit"), rows=[0])
    assert "Warning" not in line and not (tmp_path / "o").exists()
