"""The scan kernel against the per-row Decimal reference on random books."""

import re
from decimal import Decimal

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

import riskcore as rc

from riskcore.scan import part_bounds, write_scan

from books import books
from naive.scan import reference_scan

REL = Decimal("1e-9")


def close(got, want, scale) -> bool:
    if want is None:
        return got is None
    if want == Decimal("Infinity"):
        return got == float("inf")
    if got is None or not np.isfinite(got):
        return False
    return abs(Decimal(got) - want) <= REL * (abs(want) + abs(scale))


def assert_matches_reference(tables):
    ref_pos, ref_acc = reference_scan(**tables)
    result = rc.scan(rc.Book.from_tables(**tables))
    assert result.positions.height == len(ref_pos)
    assert result.accounts.height == len(ref_acc)
    for row in result.positions.iter_rows(named=True):
        want = ref_pos[(row["account_id"], row["symbol"], row["position_side"])]
        scale = want["notional"] + abs(want["upnl"]) + abs(want["mm"]) + want["im"]
        # each figure against its own size; upnl and mm can cancel, so against their terms
        own = dict(notional=0, im=0, fee=0, upnl=want["gross"], mm=want["mm_gross"])
        for name in ("notional", "upnl", "im", "mm", "fee"):
            assert close(row[name], want[name], own[name]), (name, row, want)
        assert close(row["roe"], want["roe"], abs(want["roe"]) + 1), ("roe", row, want)
        if want["margin_balance"] is not None:
            mb_scale = scale + abs(want["margin_balance"])
            assert close(row["margin_balance"], want["margin_balance"], mb_scale)
            rr_scale = abs(want["risk_ratio"]) if want["risk_ratio"].is_finite() else 0
            boundary = abs(want["margin_balance"]) <= REL * mb_scale
            if not boundary:  # the ratio is ill-conditioned where margin_balance ≈ 0
                assert close(row["risk_ratio"], want["risk_ratio"], rr_scale * Decimal(1e3) + 1), (row, want)
            if abs(want["margin_balance"] - want["fee"] - want["mm"]) > REL * mb_scale:
                assert row["liquidate"] == want["liquidate"], (row, want)
        else:
            assert row["margin_balance"] is None and row["risk_ratio"] is None
            if abs(want["wallet_margin"]) > REL * want["wallet_scale"]:  # a cross row's flag is its account's
                assert row["liquidate"] == want["liquidate"], (row, want)
    for row in result.accounts.iter_rows(named=True):
        want = ref_acc[(row["account_id"], row["asset"])]
        for name in ("equity", "cross_mm", "cross_im", "cross_fee", "order_margin", "available_balance",
                     "transferable", "total_equity"):
            assert close(row[name], want[name], want["scale"]), (name, row, want)
        if abs(want["margin"]) > REL * want["scale"]:
            assert row["liquidate"] == want["liquidate"], (row, want)
        if abs(want["equity"]) > REL * want["scale"]:  # the ratio is ill-conditioned where equity ≈ 0
            rr = want["risk_ratio"]
            assert close(row["risk_ratio"], rr, (abs(rr) if rr.is_finite() else 0) * Decimal(1e3) + 1)


@given(books())
def test_scan_matches_reference(tables):
    assert_matches_reference(tables)


@given(books(max_symbols=2, max_accounts=2, derived_only=True))
def test_scan_matches_reference_at_tier_boundaries(tables):
    """Marks moved so a position's notional sits exactly on a tier floor."""
    pos = tables["positions"].filter(pl.col("qty") != 0)
    tiers = tables["risk_tiers"].filter(pl.col("notional_floor") > 0)
    if pos.height and tiers.height:
        p = pos.row(0, named=True)
        inst = tables["instruments"].filter(pl.col("symbol") == p["symbol"]).row(0, named=True)
        floors = tiers.filter(pl.col("symbol") == p["symbol"])["notional_floor"]
        if len(floors):
            size = abs(p["qty"]) * inst["face_value"]
            price = size / floors[0] if inst["contract_type"] == "inverse" else floors[0] / size
            tables["marks"] = tables["marks"].with_columns(
                pl.when(pl.col("symbol") == p["symbol"]).then(price).otherwise(pl.col("mark_price")).alias("mark_price"))
    assert_matches_reference(tables)


def test_one_account_with_thousands_of_positions():
    n = 1500
    syms = [f"S{i:04d}USDT" for i in range(n)]
    tables = dict(
        instruments=pl.DataFrame({"symbol": syms, "contract_type": ["linear"] * n, "face_value": [1.0] * n,
                                  "taker_fee_rate": [0.0005] * n}),
        risk_tiers=pl.DataFrame({"symbol": syms * 2, "notional_floor": [0.0] * n + [1e4] * n,
                                 "mmr": [0.01] * n + [0.05] * n, "max_leverage": [50.0] * n + [10.0] * n}),
        accounts=pl.DataFrame({"account_id": [7, 8], "balance": [250_000.0, 10.0]}),
        positions=pl.DataFrame({
            "account_id": [7] * (2 * n) + [8], "symbol": syms * 2 + [syms[0]],
            "position_side": ["long"] * n + ["short"] * n + ["both"],
            "qty": [float(i % 7) for i in range(n)] + [-float(i % 5) for i in range(n)] + [1.0],
            "entry_price": [100.0 + i % 13 for i in range(2 * n)] + [100.0],
            "margin_mode": ["cross"] * (2 * n) + ["isolated"], "leverage": [10.0] * (2 * n + 1),
            "isolated_margin": [0.0] * (2 * n) + [20.0]}),
        marks=pl.DataFrame({"symbol": syms, "mark_price": [105.0 + i % 3 for i in range(n)]}),
    )
    assert_matches_reference(tables)


def test_empty_accounts_and_flat_rows():
    tables = dict(
        instruments=pl.DataFrame({"symbol": ["BTCUSDT"], "contract_type": ["linear"], "face_value": [1.0],
                                  "taker_fee_rate": [0.0004]}),
        risk_tiers=pl.DataFrame({"symbol": ["BTCUSDT"], "notional_floor": [0.0], "mmr": [0.004],
                                 "max_leverage": [125.0], "maintenance_amount": [5.0]}),
        accounts=pl.DataFrame({"account_id": [1, 2], "balance": [100.0, -1.0]}),
        positions=pl.DataFrame({"account_id": [1], "symbol": ["BTCUSDT"], "qty": [0.0], "entry_price": [5.0],
                                "margin_mode": ["cross"], "leverage": [3.0]}),
        marks=pl.DataFrame({"symbol": ["BTCUSDT"], "mark_price": [60000.0]}),
    )
    r = rc.scan(rc.Book.from_tables(**tables))
    flat = r.positions.row(0, named=True)
    assert [flat[k] for k in ("notional", "upnl", "im", "mm", "fee", "roe")] == [0.0] * 6
    assert flat["liquidate"] is False and flat["liq_price"] is None
    acc = {row["account_id"]: row for row in r.accounts.iter_rows(named=True)}
    # no cross position: risk ratio 0 and never liquidated, even with a negative balance
    assert acc[2]["risk_ratio"] == 0.0 and acc[2]["liquidate"] is False and acc[2]["equity"] == -1.0
    assert acc[1]["available_balance"] == 100.0 and acc[1]["transferable"] == 100.0
    assert_matches_reference(tables)


def test_flat_symbol_needs_no_mark():
    tables = dict(
        instruments=pl.DataFrame({"symbol": ["A", "B"], "contract_type": ["linear"] * 2, "face_value": [1.0] * 2,
                                  "taker_fee_rate": [0.0] * 2}),
        risk_tiers=pl.DataFrame({"symbol": ["A", "B"], "notional_floor": [0.0] * 2, "mmr": [0.01] * 2,
                                 "max_leverage": [50.0] * 2}),
        accounts=pl.DataFrame({"account_id": [1], "balance": [10.0]}),
        positions=pl.DataFrame({"account_id": [1, 1], "symbol": ["A", "B"], "qty": [1.0, 0.0],
                                "entry_price": [5.0, 5.0], "margin_mode": ["cross"] * 2, "leverage": [3.0] * 2}),
        marks=pl.DataFrame({"symbol": ["A"], "mark_price": [6.0]}),
    )
    r = rc.scan(rc.Book.from_tables(**tables))
    assert r.accounts["equity"].to_list() == [pytest.approx(11.0)]


def test_notional_exactly_on_a_floor_takes_the_upper_tier():
    """Model §4.2: the tier is the last with floor <= N; visible with given maintenance amounts."""
    tables = dict(
        instruments=pl.DataFrame({"symbol": ["X"], "contract_type": ["linear"], "face_value": [1.0],
                                  "taker_fee_rate": [0.0]}),
        risk_tiers=pl.DataFrame({"symbol": ["X", "X"], "notional_floor": [0.0, 100000.0], "mmr": [0.01, 0.02],
                                 "max_leverage": [50.0, 25.0], "maintenance_amount": [0.0, 500.0]}),
        accounts=pl.DataFrame({"account_id": [1], "balance": [1e6]}),
        positions=pl.DataFrame({"account_id": [1, 1], "symbol": ["X", "X"], "position_side": ["long", "short"],
                                "qty": [2.0, -1.0], "entry_price": [50000.0, 50000.0],
                                "margin_mode": ["cross", "cross"], "leverage": [10.0, 10.0]}),
        marks=pl.DataFrame({"symbol": ["X"], "mark_price": [50000.0]}),
    )
    mm = rc.scan(rc.Book.from_tables(**tables)).positions["mm"].to_list()
    assert mm == [100000.0 * 0.02 - 500.0, 50000.0 * 0.01]


def test_subset_rescan_equals_full_scan():
    """Re-scanning only the wallets holding a changed symbol (what a tick's resync does) gives
    the same figures as a full scan at the new marks."""
    from riskcore.gen import generate
    from riskcore.scan import ScanArrays, scan_into
    book = rc.Book.from_tables(**generate(300, 3000, 40, seed=2))
    out = ScanArrays.empty(len(book.positions), len(book.wallets))
    scan_into(book, book.mark, out)
    mark = book.mark.copy()
    mark[0] *= 0.93
    rows = np.flatnonzero(book.positions.symbol == 0)
    scan_into(book, mark, out, wallets=np.unique(book.positions.wallet[rows]).astype(np.int64))
    full = ScanArrays.empty(len(book.positions), len(book.wallets))
    scan_into(book, mark, full)
    for name in full.positions:
        np.testing.assert_array_equal(out.positions[name], full.positions[name], err_msg=name)
    for name in full.accounts:
        np.testing.assert_array_equal(out.accounts[name], full.accounts[name], err_msg=name)


def test_columns_keep_the_keys_and_equal_the_full_scan():
    from riskcore.gen import generate
    from riskcore.scan import ACCOUNT_COLUMNS, POSITION_COLUMNS
    book = rc.Book.from_tables(**generate(300, 3000, 40, seed=2))
    full = rc.scan(book)
    few = rc.scan(book, columns=["mm", "order_margin", "risk_ratio"])
    assert few.positions.columns == ["account_id", "symbol", "position_side", "mm", "risk_ratio"]
    assert few.accounts.columns == ["account_id", "asset", "order_margin", "risk_ratio"]
    assert few.positions.equals(full.positions.select(few.positions.columns))
    assert few.accounts.equals(full.accounts.select(few.accounts.columns))
    assert rc.scan(book, columns="liq_price").positions.equals(full.positions.select(*POSITION_COLUMNS[:3], "liq_price"))
    assert rc.scan(book, columns=()).accounts.columns == list(ACCOUNT_COLUMNS[:2])
    assert rc.scan(book, columns=["liq_price"], liq_prices=False).positions["liq_price"].null_count() == 3000
    assert "scanned 3,000 positions" in few.summary()
    with pytest.raises(ValueError, match="unknown columns 'margin', 'pnl'"):
        rc.scan(book, columns=["equity", "pnl", "margin"])


@given(tables=books(), part_rows=st.integers(1, 6), liq_prices=st.booleans())
def test_written_part_by_part_equals_the_scan(tables, part_rows, liq_prices, tmp_path_factory):
    """`scan --out` writes its figures part by part (write_scan): the same tables and summary
    as the whole scan, whatever the part size (a part never splits a wallet)."""
    book = rc.Book.from_tables(**tables)
    folder = tmp_path_factory.mktemp("out")
    summary = write_scan(book, folder, liq_prices=liq_prices, part_rows=part_rows)
    whole = rc.scan(book, liq_prices=liq_prices)
    assert pl.read_parquet(folder / "positions.parquet").equals(whole.positions)
    assert pl.read_parquet(folder / "accounts.parquet").equals(whole.accounts)
    assert _untimed(summary) == _untimed(whole.summary())


def test_parts_cover_every_wallet_once_and_never_split_one():
    from riskcore.gen import generate
    book = rc.Book.from_tables(**generate(300, 3000, 40, seed=2))
    for part_rows in (1, 7, 1000, 10**9):
        bounds = part_bounds(book, part_rows)
        assert bounds[0][0] == 0 and bounds[-1][1] == len(book.wallets)
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(bounds, bounds[1:]))
        rows = np.diff(book.wallets.pos_start[[w for w, _ in bounds] + [bounds[-1][1]]])
        assert rows.max() <= part_rows + np.diff(book.wallets.pos_start).max()
    assert len(part_bounds(book, 1000)) == 3


def _untimed(summary: str) -> str:
    return re.sub(r" in [0-9.]+ ms$", "", summary, flags=re.M)
