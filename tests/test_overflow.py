"""Money never wraps int64 or loses a unit: every addition near ±(2^63 − 1) units is
refused (a margin request rejected with would_overflow, a settlement or forced close
refused with one error line), and every money column reads back exactly at any scale."""

from decimal import Decimal

import numpy as np
import polars as pl
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import riskcore as rc
from riskcore.cli import main
from riskcore.engine import Engine
from riskcore.errors import MoneyOverflowError
from riskcore.io import book_tables, money_column, write_tables
from riskcore.money import add_split, exact_total, units_to_decimal
from riskcore.ops import REASONS, apply_requests
from riskcore.ops import add_overflows as kernel_add_overflows
from riskcore.ops import sub_overflows as kernel_sub_overflows
from riskcore.settle import settle

MAX = 2**63 - 1
MIN = -(2**63)
TOP = Decimal(MAX).scaleb(-8)  # 92,233,720,368.54775807 at scale 8


def money(values, scale=8):
    return pl.Series([Decimal(str(v)) for v in values], dtype=pl.Decimal(38, scale))


def tables(balances, positions, symbols=("AUSDT",), marks=None):
    """A small linear USDT book: `balances` {account: Decimal}, `positions` a list of dicts
    (account_id, symbol, qty, entry_price, margin_mode, isolated_margin)."""
    n = len(symbols)
    pos = pl.DataFrame({
        "account_id": [p["account_id"] for p in positions], "symbol": [p.get("symbol", symbols[0]) for p in positions],
        "position_side": ["both"] * len(positions), "qty": [float(p["qty"]) for p in positions],
        "entry_price": [float(p.get("entry_price", 100.0)) for p in positions],
        "margin_mode": [p.get("margin_mode", "cross") for p in positions],
        "leverage": [float(p.get("leverage", 10.0)) for p in positions]}).with_columns(
        money([p.get("isolated_margin", 0) for p in positions]).alias("isolated_margin"))
    return dict(
        instruments=pl.DataFrame({"symbol": list(symbols), "contract_type": ["linear"] * n, "face_value": [1.0] * n,
                                  "taker_fee_rate": [0.0] * n, "liquidation_fee_rate": [0.0] * n,
                                  "mm_im_fraction": [0.5] * n}),
        risk_tiers=pl.DataFrame(schema={"symbol": pl.String, "notional_floor": pl.Float64, "mmr": pl.Float64,
                                        "max_leverage": pl.Float64}),
        accounts=pl.DataFrame({"account_id": list(balances), "asset": ["USDT"] * len(balances)}).with_columns(
            money(balances.values()).alias("balance")),
        positions=pos,
        marks=marks if marks is not None else pl.DataFrame({"symbol": list(symbols), "mark_price": [100.0] * n}))


def with_btc(t, balance=Decimal(0)):
    """The tables with a BTC wallet for account 1 (so the book has two assets)."""
    btc = pl.DataFrame({"account_id": [1], "asset": ["BTC"]}).with_columns(money([balance], 10).alias("balance"))
    t["accounts"] = pl.concat([t["accounts"].with_columns(pl.col("balance").cast(pl.Decimal(38, 10))), btc])
    return t


def units(book, account, asset="USDT"):
    w = int(np.flatnonzero((book.wallets.account_id == account)
                           & (np.array(book.assets)[book.wallets.asset] == asset))[0])
    return int(book.wallets.balance[w])


# -- the checked addition itself -----------------------------------------------------------

int64s = st.integers(MIN, MAX)


@given(int64s, int64s)
@example(MAX, 1)
@example(MIN, -1)
@example(MIN, MIN)
@example(MAX, MIN)
@example(-1, MIN)
@example(0, MIN)
def test_checked_add_is_exact_or_refused(a, b):
    fits = MIN <= a + b <= MAX
    assert kernel_add_overflows(np.int64(a), np.int64(b)) == (not fits)
    assert kernel_sub_overflows(np.int64(a), np.int64(b)) == (not MIN <= a - b <= MAX)
    out, ok = add_split(np.array([a]), np.array([b >> 32]), np.array([b & 0xFFFFFFFF]))
    assert bool(ok[0]) == fits and (not fits or int(out[0]) == a + b)


@given(st.lists(int64s, max_size=40))
def test_exact_total_of_int64_amounts(values):
    assert exact_total(np.array(values, dtype=np.int64)) == sum(values)


# -- margin operations --------------------------------------------------------------------

START = Decimal("1234.5")


def _three_transfers_book():
    return tables({7: START}, [dict(account_id=7, qty=0.0)])


def _transfers(n=3):
    return pl.DataFrame({"request_id": list(range(1, n + 1)), "account_id": [7] * n, "op": ["transfer_in"] * n,
                         "value": [4.6e10] * n, "asset": ["USDT"] * n})


def test_third_transfer_in_is_rejected_not_wrapped():
    assert REASONS[-1] == "would_overflow"
    book = rc.Book.from_tables(**_three_transfers_book())
    new, out = apply_requests(book, _transfers())
    assert out["accepted"].to_list() == [True, True, False]
    assert out["reason"].to_list() == [None, None, "would_overflow"]
    assert units(new, 7) == (2 * 46_000_000_000 + START) * 10**8
    assert out["amount"].to_list() == [Decimal(46_000_000_000)] * 2 + [Decimal(0)]


def test_three_transfers_through_the_cli(tmp_path):
    write_tables(_three_transfers_book(), tmp_path / "book")
    _transfers().write_parquet(tmp_path / "requests.parquet")
    assert main(["apply", str(tmp_path / "book"), str(tmp_path / "requests.parquet"), "--out", str(tmp_path / "out")]) == 0
    out = pl.read_parquet(tmp_path / "out" / "outcomes.parquet")
    assert out["reason"].to_list() == [None, None, "would_overflow"]
    balance = pl.read_parquet(tmp_path / "out" / "accounts.parquet")["balance"].to_list()
    assert balance == [Decimal(2 * 46_000_000_000) + START]


def test_add_margin_near_the_limit():
    """An isolated margin at 2^63 − 1 − 10 units takes 10 more units, not 11; the wallet
    near the bottom cannot lend what would take it below −2^63 either."""
    near = Decimal(MAX - 10).scaleb(-8)
    t = tables({7: Decimal(10**9)}, [dict(account_id=7, qty=1.0, margin_mode="isolated", isolated_margin=near)])
    book = rc.Book.from_tables(**t)
    reqs = pl.DataFrame({"request_id": [1, 2, 3], "account_id": [7] * 3, "symbol": ["AUSDT"] * 3,
                         "op": ["add_margin", "add_margin", "remove_margin"],
                         "value": [1.1e-7, 1e-7, 5e8]})
    new, out = apply_requests(book, reqs)
    assert out["reason"].to_list() == ["would_overflow", None, None]
    assert int(new.positions.isolated_margin[0]) == MAX - 5 * 10**16
    assert units(new, 7) == 10**17 - 10**1 + 5 * 10**16
    # a second remove of everything back into a wallet at the top is refused
    t = tables({7: TOP}, [dict(account_id=7, qty=1.0, margin_mode="isolated", isolated_margin=Decimal(100))])
    new, out = apply_requests(rc.Book.from_tables(**t), reqs.slice(2).with_columns(pl.lit(1.0).alias("value")))
    assert out["reason"].to_list() == ["would_overflow"] and units(new, 7) == MAX


def test_mode_switch_returning_margin_is_checked():
    t = tables({7: TOP}, [dict(account_id=7, qty=0.0, margin_mode="isolated", isolated_margin=Decimal(1))])
    book = rc.Book.from_tables(**t)
    reqs = pl.DataFrame({"request_id": [1], "account_id": [7], "symbol": ["AUSDT"], "op": ["set_margin_mode"],
                         "mode": ["cross"]})
    new, out = apply_requests(book, reqs)
    assert out["reason"].to_list() == ["would_overflow"]
    assert bool(new.positions.isolated[0]) and int(new.positions.isolated_margin[0]) == 10**8 and units(new, 7) == MAX


# -- settlement ---------------------------------------------------------------------------

def _settle_case(tmp_path, t, mark):
    write_tables(t, tmp_path / "book")
    pl.DataFrame({"symbol": t["instruments"]["symbol"], "mark_price": [float(mark)] * t["instruments"].height,
                  "funding_rate": [0.0] * t["instruments"].height}).write_parquet(tmp_path / "marks.parquet")
    return ["settle", str(tmp_path / "book"), "--marks", str(tmp_path / "marks.parquet"), "--id", "s1",
            "--out", str(tmp_path / "out")]


def test_settlement_refused_when_a_credit_would_overflow_an_isolated_margin(tmp_path, capsys):
    near = Decimal(MAX - 10**16).scaleb(-8)  # 100,000,000 USDT below the top
    t = tables({1: Decimal(0), 2: Decimal(0)},
               [dict(account_id=2, qty=1.0, margin_mode="isolated", isolated_margin=Decimal(5)),
                dict(account_id=1, qty=2.0, margin_mode="isolated", isolated_margin=near)])
    argv = _settle_case(tmp_path, t, 100_000_000)  # realize 2 × (1e8 − 100) > 1e8 of room
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "positions.parquet: column 'isolated_margin'" in err[0] and "(rows 1; 1 in all)" in err[0], err
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_settlement_refused_when_a_wallet_delta_would_overflow(tmp_path, capsys):
    """Three cross credits of 4e10 USDT, each one representable, overflow a wallet together
    (an int64 sum of them wraps); the refusal names the accounts file row."""
    pos = [dict(account_id=1, symbol=s, qty=1.0, entry_price=1e6) for s in ("AUSDT", "BUSDT", "CUSDT")]
    t = tables({9: Decimal(0), 1: Decimal(0)}, pos, symbols=("AUSDT", "BUSDT", "CUSDT"))
    argv = _settle_case(tmp_path, t, 40_001_000_000)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "accounts.parquet: column 'balance'" in err[0] and "(rows 1; 1 in all)" in err[0], err
    assert not (tmp_path / "out").exists()


def test_settlement_whose_sum_leaves_int64_but_final_balance_fits_is_exact(tmp_path):
    """A wallet at −8e10 USDT receiving 3 × 4e10: the delta (1.2e19 units) is beyond int64 but
    the balance afterwards (4e10) is not; the house row −1.2e11 is written exactly."""
    pos = [dict(account_id=1, symbol=s, qty=1.0, entry_price=1e6) for s in ("AUSDT", "BUSDT", "CUSDT")]
    t = tables({1: Decimal(-80_000_000_000)}, pos, symbols=("AUSDT", "BUSDT", "CUSDT"))
    argv = _settle_case(tmp_path, t, 40_001_000_000)
    assert main(argv) == 0
    assert pl.read_parquet(tmp_path / "out" / "accounts.parquet")["balance"].to_list() == [Decimal(40_000_000_000)]
    ledger = pl.read_parquet(tmp_path / "out" / "ledger.parquet")
    assert ledger.filter(pl.col("account_id") == -1)["amount"].to_list() == [Decimal(-120_000_000_000)]
    assert sum(ledger["amount"].to_list()) == 0


def test_ledger_at_mixed_scales_is_exact_near_the_limit(tmp_path):
    """USDT at 6 places, BTC at 10: the ledger's one column is at 10 places, so a USDT amount
    near 2^63 units is multiplied by 10^4 — beyond int64, exact in decimal128."""
    realized = 4_000_000_000_000  # USDT: 4e18 units at scale 6 (one amount stays below 2^62)
    t = with_btc(tables({1: Decimal(0)}, [dict(account_id=1, qty=1.0, entry_price=1e6)]), Decimal("1e-10"))
    write_tables(t, tmp_path / "book")
    pl.DataFrame({"symbol": ["AUSDT"], "mark_price": [realized + 1e6], "funding_rate": [0.0]}).write_parquet(
        tmp_path / "marks.parquet")
    settle(tmp_path / "book", tmp_path / "out", marks=tmp_path / "marks.parquet", settlement_id="m",
           steps=("realize",), money_scale={"USDT": 6, "BTC": 10})
    ledger = pl.read_parquet(tmp_path / "out" / "ledger.parquet")
    assert ledger.schema["amount"] == pl.Decimal(38, 10)
    assert sorted(ledger["amount"].to_list()) == [Decimal(-realized), Decimal(realized)]
    accounts = pl.read_parquet(tmp_path / "out" / "accounts.parquet").sort("asset")
    assert accounts["balance"].to_list() == [Decimal("0.0000000001"), Decimal(realized)]


# -- output money columns -----------------------------------------------------------------

@pytest.mark.parametrize("scales", [{"USDT": 6, "BTC": 10}, {"USDT": 0, "BTC": 18}, {"USDT": 8, "BTC": 8}])
def test_money_columns_are_exact_for_every_int64_at_every_shift(scales):
    t = with_btc(tables({1: Decimal(0)}, [dict(account_id=1, qty=0.0)]))
    book = rc.Book.from_tables(**t, money_scale=scales)
    amounts = [MAX, MIN, MIN + 1, -1, 1, 0, 123456789012345678, -987654321098765432]
    asset = np.array([book.assets.index(a) for a in ("USDT", "BTC")] * 4)
    col = money_column(book, np.array(amounts, dtype=np.int64), asset)
    assert col.dtype == pl.Decimal(38, max(scales.values()))
    expect = [Decimal(u).scaleb(-scales[book.assets[a]]) for u, a in zip(amounts, asset)]
    assert col.to_list() == expect
    per_row = units_to_decimal(np.array(amounts, dtype=np.int64), 19, np.arange(len(amounts)) % 3)
    assert per_row.to_pylist() == [Decimal(u).scaleb(-(k % 3)) for k, u in enumerate(amounts)]


def test_book_tables_and_fund_read_back_exactly_at_mixed_scales():
    t = tables({1: Decimal(MAX).scaleb(-6)}, [dict(account_id=1, qty=0.0)])
    book = rc.Book.from_tables(**t, money_scale={"USDT": 6, "BTC": 10})
    assert book_tables(book)["accounts"]["balance"].to_list() == [Decimal(MAX).scaleb(-6)]
    book = rc.Book.from_tables(**with_btc(t), money_scale={"USDT": 6, "BTC": 10})
    assert book_tables(book)["accounts"].sort("asset")["balance"].to_list() == [0, Decimal(MAX).scaleb(-6)]
    book = rc.Book.from_tables(**t, money_scale={"USDT": 6, "BTC": 10})
    fund = pl.DataFrame({"asset": ["USDT", "BTC"]}).with_columns(
        pl.Series([Decimal(MAX).scaleb(-6), Decimal(MIN + 1).scaleb(-10)], dtype=pl.Decimal(38, 10)).alias("balance"))
    e = Engine(book, insurance_fund=fund)
    got = dict(e.insurance_fund().iter_rows())
    assert got == {"USDT": Decimal(MAX).scaleb(-6), "BTC": Decimal(MIN + 1).scaleb(-10)}


# -- the engine ---------------------------------------------------------------------------

def _state(e):
    b = e.book
    return (b.wallets.balance.tolist(), b.positions.isolated_margin.tolist(), b.positions.qty.tolist(),
            e.fund.tolist(), len(e._events), e.order_cancelled.tolist())


def test_isolated_close_refused_when_the_margin_left_would_overflow_the_wallet():
    """Seed 003 with the wallet at the top: 49 USDT of margin would go home; the close is
    refused with one line and nothing of it is applied."""
    t = tables({1: TOP}, [dict(account_id=1, qty=0.1, entry_price=50000.0, margin_mode="isolated",
                               isolated_margin=Decimal(100), leverage=50.0)],
               marks=pl.DataFrame({"symbol": ["AUSDT"], "mark_price": [50000.0]}))
    e = Engine(rc.Book.from_tables(**t), liquidate=True)
    before = _state(e)
    with pytest.raises(MoneyOverflowError) as err:
        e.on_marks(["AUSDT"], [49490.0], ts=1)
    assert isinstance(err.value, rc.BookError) and err.value.column == "balance"
    assert "\n" not in str(err.value) and "the close was not made" in str(err.value)
    after = _state(e)
    assert after[:4] == before[:4] and after[5] == before[5]
    assert e.events()["kind"].cast(pl.String).to_list()[after[4] - 1] == "position_liquidatable"


def test_other_closes_of_the_tick_still_happen():
    """Two isolated positions liquidate on one tick; account 1's wallet is at the top, so
    only account 2's close is made, the engine's figures are re-checked, then the error."""
    pos = [dict(account_id=a, qty=0.1, entry_price=50000.0, margin_mode="isolated", isolated_margin=Decimal(100),
                leverage=50.0) for a in (1, 2)]
    t = tables({1: TOP, 2: Decimal(300)}, pos, marks=pl.DataFrame({"symbol": ["AUSDT"], "mark_price": [50000.0]}))
    e = Engine(rc.Book.from_tables(**t), liquidate=True)
    with pytest.raises(MoneyOverflowError, match=r"rows 0; 1 in all"):
        e.on_marks(["AUSDT"], [49490.0], ts=1)
    assert e.book.positions.qty.tolist() == [0.1, 0.0]
    assert units(e.book, 1) == MAX and units(e.book, 2) == (300 + 49) * 10**8
    closes = e.events().filter(pl.col("kind") == "liquidation_close")
    assert closes["account_id"].to_list() == [2] and closes["realized_pnl"].to_list() == [Decimal(-51)]
    assert e.position_figures()["liquidate"].tolist() == [True, False]


def test_fund_that_would_overflow_refuses_the_close():
    t = tables({1: Decimal(300)}, [dict(account_id=1, qty=0.1, entry_price=50000.0, margin_mode="isolated",
                                        isolated_margin=Decimal(100), leverage=50.0)],
               marks=pl.DataFrame({"symbol": ["AUSDT"], "mark_price": [50000.0]}))
    t["instruments"] = t["instruments"].with_columns(pl.lit(0.005).alias("liquidation_fee_rate"))
    fund = pl.DataFrame({"asset": ["USDT"]}).with_columns(money([TOP]).alias("balance"))
    e = Engine(rc.Book.from_tables(**t), liquidate=True, insurance_fund=fund)
    before = _state(e)
    with pytest.raises(MoneyOverflowError, match="insurance_fund"):
        e.on_marks(["AUSDT"], [49490.0], ts=1)
    assert _state(e)[:4] == before[:4]
    # below the limit the same close goes through, exactly
    fund = pl.DataFrame({"asset": ["USDT"]}).with_columns(money([TOP - Decimal("24.745")]).alias("balance"))
    e = Engine(rc.Book.from_tables(**t), liquidate=True, insurance_fund=fund)
    e.on_marks(["AUSDT"], [49490.0], ts=1)
    assert int(e.fund[0]) == MAX and units(e.book, 1) == 30_000_000_000 + 2_425_500_000


def test_adl_credit_that_would_overflow_refuses_the_close():
    """A bankrupt long closed against a short whose wallet sits at the top: the ADL gain
    cannot be credited, so nothing of the close happens."""
    t = tables({1: Decimal(0), 2: TOP},
               [dict(account_id=1, qty=0.1, entry_price=50000.0, margin_mode="isolated",
                     isolated_margin=Decimal(100), leverage=50.0),
                dict(account_id=2, qty=-0.1, entry_price=51000.0)],
               marks=pl.DataFrame({"symbol": ["AUSDT"], "mark_price": [50000.0]}))
    e = Engine(rc.Book.from_tables(**t), liquidate=True)
    before = _state(e)
    with pytest.raises(MoneyOverflowError, match="balance"):
        e.on_marks(["AUSDT"], [48000.0], ts=1)
    assert _state(e)[:4] == before[:4]


def test_replay_stops_with_one_line_on_an_overflowing_close(tmp_path, capsys):
    t = tables({1: TOP}, [dict(account_id=1, qty=0.1, entry_price=50000.0, margin_mode="isolated",
                               isolated_margin=Decimal(100), leverage=50.0)],
               marks=pl.DataFrame({"symbol": ["AUSDT"], "mark_price": [50000.0]}))
    write_tables(t, tmp_path / "book")
    pl.DataFrame({"ts": [1], "symbol": ["AUSDT"], "mark_price": [49490.0]}).write_parquet(tmp_path / "ticks.parquet")
    assert main(["replay", str(tmp_path / "book"), str(tmp_path / "ticks.parquet"), "--liquidate",
                 "--out", str(tmp_path / "out")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("riskcore: error")]
    assert len(err) == 1 and "engine: column 'balance'" in err[0]
    assert not (tmp_path / "out").exists()
