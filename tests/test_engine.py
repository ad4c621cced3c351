"""The tick engine (docs/model.md §8) against full re-scans and plain liquidation rules."""

from decimal import Decimal
from unittest import mock

import numpy as np
import polars as pl
import pytest
from hypothesis import assume, given

import riskcore as rc
from riskcore.engine import Engine, TickError, liquidation
from riskcore.io import book_tables
from riskcore.scan import ScanArrays, scan_into

from books import books, representable, tick_paths
from naive.engine import reference_liquidation
from naive.scan import reference_scan

CLOSES = ("liquidation_close", "adl_close", "insurance_fund_shortfall")


def assert_equals_full_scan(engine):
    """The engine's running state equals a fresh full scan of its book at its marks: per
    position exactly the same formulas; per wallet the running sums agree to 1e-9 of the
    magnitudes summed (sums kept by deltas differ from a fresh sum only by rounding)."""
    full = ScanArrays.empty(len(engine.book.positions), len(engine.book.wallets))
    scan_into(engine.book, engine.mark, full, with_liq_price=False)
    mine = engine.position_figures()
    for name in ("upnl", "mm", "im", "fee", "notional"):
        np.testing.assert_allclose(mine[name], full.positions[name], rtol=1e-12, err_msg=name)
    iso = engine.book.positions.isolated
    np.testing.assert_array_equal(mine["liquidate"][iso], full.positions["liquidate"][iso])
    p, a = full.positions, full.accounts
    wallet = engine.book.positions.wallet
    gross = np.abs(engine.book.wallets.balance * engine.book.wallet_unit) + np.bincount(
        wallet, weights=p["notional"] + np.abs(p["upnl"]) + np.abs(p["mm"]), minlength=len(engine.book.wallets))
    for name in ("equity", "cross_mm", "cross_im", "cross_fee", "available_balance", "transferable", "total_equity"):
        np.testing.assert_array_less(np.abs(engine.out.accounts[name] - a[name]), 1e-9 * gross + 1e-300,
                                     err_msg=name)
    margin = np.abs(a["equity"] - a["cross_fee"] - a["cross_mm"])
    clear = margin > 1e-9 * gross  # flags agree wherever the boundary is not within rounding
    np.testing.assert_array_equal(engine.out.accounts["liquidate"][clear], a["liquidate"][clear])


def run(tables, path, fund, liquidate, resync_every=1000):
    book = rc.Book.from_tables(**tables)
    fund_table = pl.DataFrame({"asset": book.assets, "balance": [fund] * len(book.assets)})
    engine = Engine(book, liquidate=liquidate, insurance_fund=fund_table, resync_every=resync_every)
    for ts, (chosen, moves) in enumerate(path):
        idx = [book.instruments.symbol.index(s) for s in chosen]
        engine.on_marks(chosen, engine.mark[idx] * np.array(moves), ts=ts)
    return book, engine


@given(tick_paths())
def test_incremental_figures_equal_full_scan(case):
    tables, path, fund = case
    _, engine = run(tables, path, fund, liquidate=False)
    assert_equals_full_scan(engine)
    _, resyncing = run(tables, path, fund, liquidate=False, resync_every=2)  # exact recomputes midway
    assert_equals_full_scan(resyncing)


def money_by_asset(book, fund_units):
    t = book_tables(book)
    settle = dict(zip(t["instruments"]["symbol"], t["instruments"]["settle_asset"]))
    out = {a: Decimal(int(u)) / 10**8 for a, u in zip(book.assets, fund_units)}
    for r in t["accounts"].iter_rows(named=True):
        out[r["asset"]] += r["balance"]
    for r in t["positions"].iter_rows(named=True):
        out[settle[str(r["symbol"])]] += r["isolated_margin"]
    return out


@given(tick_paths())
def test_liquidation_conserves_money_exactly(case):
    """balances + isolated margins + fund change by exactly the realized PnL of the closes."""
    tables, path, fund = case
    before_book = rc.Book.from_tables(**tables)
    before = money_by_asset(before_book, np.full(len(before_book.assets), round(fund * 1e8)))
    _, engine = run(tables, path, fund, liquidate=True)
    after = money_by_asset(engine.book, engine.fund)
    ev = engine.events()
    flows = ev.filter(pl.col("kind").cast(pl.String).is_in(CLOSES)).group_by(pl.col("asset").cast(pl.String)).agg(
        pl.col("realized_pnl").sum())
    realized = dict(zip(flows["asset"], flows["realized_pnl"]))
    for asset in before:
        assert after[asset] - before[asset] == realized.get(asset, 0), asset
    # nothing liquidatable is left open, and the figures are a full scan's
    assert_equals_full_scan(engine)
    assert not (engine.position_figures()["liquidate"] & (engine.book.positions.qty != 0)).any()
    assert not engine.out.accounts["liquidate"].any()


def general_planner_only():
    """Every close made by the general planner (liquidation.plan_close, Python integers): the
    compiled pass defers each close to it."""
    def defer(k, closes, *args):
        return (liquidation.DONE if k >= len(closes.wallet) else liquidation.GENERAL), k, args[-1]
    return mock.patch.object(liquidation, "_run_closes", defer)


def assert_same_engines(a, b):
    """Two engines that made the same closes: events, book, fund and orders identical."""
    assert a.events().equals(b.events())
    for name in ("qty", "isolated_margin"):
        np.testing.assert_array_equal(getattr(a.book.positions, name), getattr(b.book.positions, name))
    np.testing.assert_array_equal(a.book.wallets.balance, b.book.wallets.balance)
    np.testing.assert_array_equal(a.fund, b.fund)
    np.testing.assert_array_equal(a.order_cancelled, b.order_cancelled)


@given(tick_paths())
def test_compiled_closes_equal_the_general_planner(case):
    """The compiled round makes exactly the closes the general planner makes (fees, fund,
    bankruptcy prices, ADL in queue order, shortfalls): same events, book and fund."""
    tables, path, fund = case
    _, compiled = run(tables, path, fund, liquidate=True)
    with general_planner_only():
        _, general = run(tables, path, fund, liquidate=True)
    assert_same_engines(compiled, general)


@pytest.mark.parametrize("seed,factor", [(2, 0.8), (3, 1.25), (5, 0.6)])
def test_a_crash_with_an_empty_fund_closes_as_the_general_planner_does(seed, factor):
    """Thousands of closes and ADL counterparties in one round: the log grows past its first
    capacity and ADL credits land on the unit grid (exact amounts asked of money.py)."""
    from riskcore.gen import generate
    book = rc.Book.from_tables(**generate(300, 3000, 10, seed=seed))
    engines = []
    for patch in (mock.MagicMock(), general_planner_only()):
        with patch:
            e = Engine(book, liquidate=True)
            e.on_symbol_marks(np.arange(len(book.instruments)), e.mark * factor, 1)
        engines.append(e)
    assert_same_engines(*engines)
    kinds = engines[0].events()["kind"].cast(pl.String).value_counts()
    assert dict(kinds.rows())["adl_close"] > 100 and len(engines[0].events()) > 1024


@given(tick_paths())
def test_screened_ticks_report_what_full_rescans_report(case):
    """Ticks moving most of the book, looked at only where the screen says a flag can change
    (every such tick screened here), give the events, closes, book and fund of exact full
    rescans; figures after refresh() are a full scan's."""
    from riskcore.engine import core
    tables, path, fund = case
    for liquidate in (False, True):
        with mock.patch.object(core, "SCREEN_SHARE", 1.0):
            _, screened = run(tables, path, fund, liquidate)
        with mock.patch.object(core, "SCREEN_SHARE", 0.0):
            _, rescanned = run(tables, path, fund, liquidate)
        a, b = screened.events(), rescanned.events()
        figures = ["equity", "mm", "risk_ratio"]  # running sums or exact recomputes: the same to rounding
        assert a.drop(figures).equals(b.drop(figures))
        for name in figures:
            np.testing.assert_allclose(a[name].to_numpy(), b[name].to_numpy(), rtol=1e-9, atol=1e-9, err_msg=name)
        np.testing.assert_array_equal(screened.book.positions.qty, rescanned.book.positions.qty)
        np.testing.assert_array_equal(screened.book.wallets.balance, rescanned.book.wallets.balance)
        np.testing.assert_array_equal(screened.fund, rescanned.fund)
        assert_equals_full_scan(screened)


@pytest.mark.parametrize("liquidate", [False, True])
def test_a_desk_feed_screened_reports_what_full_rescans_report(liquidate):
    """A generated book under 150 all-symbol ticks of a wild market (1% per tick, every tick
    screened, thousands of flags changing): the same events, closes and book as full
    rescans."""
    from riskcore.engine import core
    from riskcore.gen import generate
    tables = generate(400, 4000, 12, seed=4)
    book = rc.Book.from_tables(**tables)
    rng = np.random.default_rng(5)
    path = book.mark * np.exp(np.cumsum(rng.normal(0, 0.01, (150, len(book.mark))), axis=0))
    engines = []
    for share in (1.0, 0.0):
        with mock.patch.object(core, "SCREEN_SHARE", share):
            e = Engine(rc.Book.from_tables(**tables), liquidate=liquidate)
            for ts, marks in enumerate(path):
                e.on_symbol_marks(np.arange(len(marks)), marks, ts)
        engines.append(e)
    screened, rescanned = engines
    a, b = screened.events(), rescanned.events()
    assert a.height > 1000
    figures = ["equity", "mm", "risk_ratio"]
    assert a.drop(figures).equals(b.drop(figures))
    np.testing.assert_array_equal(screened.book.wallets.balance, rescanned.book.wallets.balance)
    assert_equals_full_scan(screened)


def one_position(qty=0.1, margin_mode="isolated", isolated_margin=100.0, balance=300.0, fee=0.0, liq_fee=0.0,
                 extra=None):
    """Seed 003: 0.1 BTC at 50,000, 100 USDT isolated margin, MM = 50% of used margin."""
    positions = [dict(account_id=1, symbol="BTCUSDT", position_side="both", qty=qty, entry_price=50000.0,
                      margin_mode=margin_mode, leverage=50.0, isolated_margin=isolated_margin)]
    accounts = [dict(account_id=1, asset="USDT", balance=balance)]
    for row in extra or []:
        row = dict(row)
        wallet_balance = row.pop("balance", 1000.0)
        positions.append(dict(dict(position_side="both", entry_price=50000.0, margin_mode="cross", leverage=10.0,
                                   isolated_margin=0.0, symbol="BTCUSDT"), **row))
        if row["account_id"] not in [a["account_id"] for a in accounts]:
            accounts.append(dict(account_id=row["account_id"], asset="USDT", balance=wallet_balance))
    return dict(
        instruments=pl.DataFrame({"symbol": ["BTCUSDT"], "contract_type": ["linear"], "face_value": [1.0],
                                  "taker_fee_rate": [fee], "liquidation_fee_rate": [liq_fee], "mm_im_fraction": [0.5]}),
        risk_tiers=pl.DataFrame(schema={"symbol": pl.String, "notional_floor": pl.Float64, "mmr": pl.Float64,
                                        "max_leverage": pl.Float64}),
        accounts=pl.DataFrame(accounts), positions=pl.DataFrame(positions),
        marks=pl.DataFrame({"symbol": ["BTCUSDT"], "mark_price": [50000.0]}))


def test_events_are_edge_triggered():
    book = rc.Book.from_tables(**one_position())
    e = Engine(book)
    assert e.on_marks(["BTCUSDT"], [49400.0], ts=1) == 1   # becomes liquidatable
    assert e.on_marks(["BTCUSDT"], [49000.0], ts=2) == 0   # still: no repeat
    assert e.on_marks(["BTCUSDT"], [50000.0], ts=3) == 0   # recovers
    assert e.on_marks(["BTCUSDT"], [49300.0], ts=4) == 1   # again
    ev = e.events()
    assert ev["kind"].cast(pl.String).to_list() == ["position_liquidatable"] * 2
    assert ev["ts"].to_list() == [1, 4] and ev["symbol"].to_list() == ["BTCUSDT"] * 2


def test_seed_003_isolated_loss_never_touches_the_wallet():
    book = rc.Book.from_tables(**one_position(liq_fee=0.005))
    e = Engine(book, liquidate=True)
    e.on_marks(["BTCUSDT"], [49490.0], ts=1)
    close = e.events().filter(pl.col("kind") == "liquidation_close").row(0, named=True)
    # loss 0.1 × 510 = 51 of the 100 margin; fee 0.5% of 4,949 = 24.745 to the fund; 24.255 home
    assert close["realized_pnl"] == Decimal("-51") and close["insurance_fund_delta"] == Decimal("24.745")
    assert e.book.wallets.balance[0] == (300 + 24.255) * 1e8
    assert e.book.positions.qty[0] == 0 and e.book.positions.isolated_margin[0] == 0
    assert e.fund[0] == 24.745e8


def test_bankrupt_isolated_close_paid_by_the_fund():
    book = rc.Book.from_tables(**one_position())
    e = Engine(book, liquidate=True, insurance_fund=pl.DataFrame({"asset": ["USDT"], "balance": [1000.0]}))
    e.on_marks(["BTCUSDT"], [48000.0], ts=1)  # loss 200 > margin 100: deficit 100
    close = e.events().filter(pl.col("kind") == "liquidation_close").row(0, named=True)
    assert close["realized_pnl"] == Decimal("-200") and close["insurance_fund_delta"] == Decimal("-100")
    assert e.fund[0] == 900e8 and e.book.wallets.balance[0] == 300e8


def test_adl_when_the_fund_cannot_pay():
    """Bankrupt long 0.1 closed at its bankruptcy price 49,000 against the best-ranked shorts."""
    # same pnl% (+5.9%); effective leverage = notional / equity: 2,400 / 250 beats 3,840 / 1,240
    extra = [dict(account_id=2, qty=-0.05, entry_price=51000.0, balance=100.0),
             dict(account_id=3, qty=-0.08, entry_price=51000.0)]
    book = rc.Book.from_tables(**one_position(extra=extra))
    e = Engine(book, liquidate=True)
    e.on_marks(["BTCUSDT"], [48000.0], ts=1)
    ev = e.events().filter(pl.col("kind").cast(pl.String).is_in(CLOSES))
    rows = ev.select("kind", "account_id", "qty", "price", "realized_pnl").rows()
    assert rows[0] == ("liquidation_close", 1, -0.1, 49000.0, Decimal("-100"))
    assert [r[1] for r in rows[1:]] == [2, 3]
    assert rows[1][2:] == (0.05, 49000.0, Decimal("100"))         # 0.05 × (51,000 − 49,000)
    assert rows[2][2] == pytest.approx(0.05) and rows[2][4] == Decimal("100")
    assert e.fund[0] == 0 and e.book.wallets.balance[0] == 300e8
    assert e.book.positions.qty.tolist() == [0.0, 0.0, pytest.approx(-0.03)]


def test_seed_001_cross_liquidation_closes_every_cross_position():
    tables = one_position(margin_mode="cross", isolated_margin=0.0, balance=250.0, extra=[
        dict(account_id=1, symbol="ETHUSDT", qty=1.0, entry_price=3000.0, leverage=10.0)])
    tables["instruments"] = pl.concat([tables["instruments"], tables["instruments"].with_columns(
        pl.lit("ETHUSDT").alias("symbol"))])
    tables["marks"] = pl.DataFrame({"symbol": ["BTCUSDT", "ETHUSDT"], "mark_price": [50000.0, 3000.0]})
    book = rc.Book.from_tables(**tables)
    e = Engine(book, liquidate=True)
    assert not e.events().height  # equity 250 > mm 0.5 × (5,000/50 + 3,000/10) = 200
    e.on_marks(["BTCUSDT"], [48500.0], ts=1)  # equity 250 − 150 = 100 ≤ mm 48.5 + 150
    ev = e.events()
    kinds = ev["kind"].cast(pl.String).to_list()
    assert kinds[0] == "account_liquidatable" and kinds.count("liquidation_close") == 2
    assert (e.book.positions.qty == 0).all() and e.book.wallets.balance[0] == 100e8


def test_bad_ticks_are_rejected_and_change_nothing():
    book = rc.Book.from_tables(**one_position())
    e = Engine(book)
    e.on_marks(["BTCUSDT"], [50100.0], ts=5)
    for symbols, prices, ts, words in ((["NOPE"], [1.0], 6, "unknown symbol"),
                                       (["BTCUSDT"], [float("nan")], 6, "finite and positive"),
                                       (["BTCUSDT"], [-1.0], 6, "finite and positive"),
                                       (["BTCUSDT"], [49000.0], 4, "time goes backwards"),
                                       (["BTCUSDT", "BTCUSDT"], [1.0, 2.0], 6, "twice")):
        with pytest.raises(TickError, match=words):
            e.on_marks(symbols, prices, ts=ts)
        assert e.mark[0] == 50100.0 and e.ts == 5


def test_cli_replay_reports_and_skips_bad_ticks(tmp_path, capsys):
    from riskcore.cli import main
    (tmp_path / "book").mkdir()
    for name, df in one_position(liq_fee=0.005).items():
        df.write_parquet(tmp_path / "book" / f"{name}.parquet")
    pl.DataFrame({"ts": [1, 2, 2, 3, 0, 4], "symbol": ["BTCUSDT", "BTCUSDT", "NOPE", "BTCUSDT", "BTCUSDT", "BTCUSDT"],
                  "mark_price": [50100.0, 49000.0, 1.0, float("nan"), 50000.0, 49400.0]}).write_parquet(tmp_path / "t.parquet")
    assert main(["replay", str(tmp_path / "book"), str(tmp_path / "t.parquet"), "--out", str(tmp_path / "o"),
                 "--liquidate"]) == 0
    out, err = capsys.readouterr()
    assert "2 ticks in" in out and "position_liquidatable 1" in out and "liquidation_close 1" in out
    assert "skipped 3 bad tick(s)" in err
    assert "unknown symbol: NOPE" in err and "finite and positive" in err and "time goes backwards" in err
    ev = pl.read_parquet(tmp_path / "o" / "events.parquet")
    assert ev["kind"].cast(pl.String).to_list() == ["position_liquidatable", "liquidation_close"]
    assert rc.load_book(tmp_path / "o" / "book").positions.qty.tolist() == [0.0]


def test_gen_ticks_replay_end_to_end(tmp_path, capsys):
    from riskcore.cli import main
    assert main(["gen", "--accounts", "200", "--positions", "2000", "--symbols", "20", "--ticks", "30",
                 str(tmp_path / "b")]) == 0
    assert main(["replay", str(tmp_path / "b"), str(tmp_path / "b" / "ticks.parquet"), "--out", str(tmp_path / "o"),
                 "--liquidate"]) == 0
    assert "30 ticks in" in capsys.readouterr().out


def clear_of_the_boundary(tables) -> bool:
    """No wallet's cushion (equity − fee − mm) within rounding of 0: there float and exact
    decisions may differ (issue 13's exact decisions at the boundary)."""
    _, accounts = reference_scan(**tables)
    return all(abs(a["margin"]) > Decimal("1e-9") * a["scale"] for a in accounts.values())


@given(books(max_symbols=3, max_accounts=4).filter(representable))
def test_forced_closes_match_a_plain_liquidation_procedure(tables):
    tables["instruments"] = tables["instruments"].with_columns(
        pl.Series("liquidation_fee_rate", [0.005, 0.0125, 0.0][:tables["instruments"].height] * 3)[
            :tables["instruments"].height])
    assume(clear_of_the_boundary(tables))
    book = rc.Book.from_tables(**tables)
    fund_units = {a: 4 * 10**18 for a in book.assets}  # deep enough that no close needs ADL
    engine = Engine(book, liquidate=True, insurance_fund=pl.DataFrame(
        {"asset": book.assets, "balance": pl.Series([Decimal(4 * 10**10)] * len(book.assets), dtype=pl.Decimal(38, 8))}))
    assert not engine.events().filter(pl.col("kind") == "adl_close").height
    balance, margin, fund = reference_liquidation(tables, fund_units)
    got_balance = {(int(a), book.assets[s]): int(b) for a, s, b in
                   zip(engine.book.wallets.account_id, engine.book.wallets.asset, engine.book.wallets.balance)}
    assert got_balance == balance
    pos = engine.book.positions
    got_margin = {(int(engine.book.wallets.account_id[w]), book.instruments.symbol[s], ("both", "long", "short")[d]): int(m)
                  for w, s, d, m in zip(pos.wallet, pos.symbol, pos.side, pos.isolated_margin)}
    assert got_margin == margin
    assert dict(zip(book.assets, map(int, engine.fund))) == fund
