"""Margin operations (docs/model.md §7) against the one-at-a-time Decimal reference."""

from decimal import Decimal

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

import riskcore as rc
from riskcore.cli import main
from riskcore.io import book_tables
from riskcore.ops import apply_requests

from books import books, good
from naive.ops import reference_apply

OPS = ["add_margin", "remove_margin", "set_leverage", "set_margin_mode", "transfer_in", "transfer_out"]
REQUEST_SCHEMA = dict(request_id=pl.Int64, account_id=pl.Int64, symbol=pl.String, position_side=pl.String,
                      op=pl.String, value=pl.Float64, mode=pl.String, asset=pl.String)


def requests(rows):
    return pl.DataFrame([dict(dict.fromkeys(REQUEST_SCHEMA), request_id=i, **r) for i, r in enumerate(rows)],
                        schema=REQUEST_SCHEMA)


@st.composite
def batches(draw):
    tables = draw(books(max_symbols=3, max_accounts=3))
    pos = tables["positions"].to_dicts()
    accts = tables["accounts"].to_dicts()
    rows = []
    for _ in range(draw(st.integers(0, 12))):
        op = draw(st.sampled_from(OPS + ["bogus"]))
        value = draw(st.sampled_from([None, float("nan"), -1.0, 0.0, 1e-9, 0.01, 0.5, 1.0, 2.0, 10.0, 125.0,
                                      1000.0, 2.5e7]))
        if op.startswith("transfer") and accts:
            a = draw(st.sampled_from(accts))
            rows.append(dict(account_id=a["account_id"], op=op, value=value, asset=a["asset"]))
        elif pos and draw(st.integers(0, 9)):
            p = draw(st.sampled_from(pos))
            rows.append(dict(account_id=p["account_id"], symbol=p["symbol"], position_side=p["position_side"],
                             op=op, value=value, mode=draw(st.sampled_from(["cross", "isolated", "portfolio"]))))
        else:  # unknown accounts and symbols
            rows.append(dict(account_id=draw(st.sampled_from([0, 12345])), symbol=draw(st.sampled_from(["S0USDT", "NOPE"])),
                             op=op, value=value))
    return tables, requests(rows)


def _money_by_asset(tables):
    out = {}
    settle = dict(zip(tables["instruments"]["symbol"], tables["instruments"]["settle_asset"].fill_null("USDT")))
    for r in tables["accounts"].iter_rows(named=True):
        out[r["asset"]] = out.get(r["asset"], 0) + Decimal(str(r["balance"]))
    for r in tables["positions"].iter_rows(named=True):
        a = settle[str(r["symbol"])]
        out[a] = out.get(a, 0) + Decimal(str(r["isolated_margin"]))
    return out


@given(batches())
def test_matches_one_at_a_time_reference_and_conserves_money(batch):
    tables, reqs = batch
    book = rc.Book.from_tables(**tables)
    new, out = apply_requests(book, reqs)
    assert out["request_id"].to_list() == reqs["request_id"].to_list()
    engine = [(r["accepted"], r["reason"], r["amount"]) for r in out.iter_rows(named=True)]
    ref, ref_accounts, ref_positions = reference_apply(tables, reqs, engine)
    for got, want, req in zip(engine, ref, reqs.iter_rows(named=True)):
        assert got == want, (req, got, want)
    # final money, exactly
    after = book_tables(new)
    balances = {(r["account_id"], r["asset"]): r["balance"] for r in after["accounts"].iter_rows(named=True)}
    assert balances == {(a["account_id"], a["asset"]): a["balance"] for a in ref_accounts}
    margins = {(r["account_id"], str(r["symbol"]), str(r["position_side"])): (r["isolated_margin"], str(r["margin_mode"]))
               for r in after["positions"].iter_rows(named=True)}
    assert margins == {(p["account_id"], p["symbol"], p["position_side"]): (p["isolated_margin"], p["margin_mode"])
                       for p in ref_positions}
    # conservation: before = after + transfers out − transfers in, per asset
    before, now = _money_by_asset(book_tables(book)), _money_by_asset(after)
    flows = {}
    for r in out.filter("accepted").join(reqs, on="request_id").iter_rows(named=True):
        sign = {"transfer_in": 1, "transfer_out": -1}.get(r["op"], 0)
        flows[r["asset"]] = flows.get(r["asset"], 0) + sign * r["amount"]
    for asset in before:
        assert before[asset] + flows.get(asset, 0) == now[asset]


def _apply(rows, tables=None):
    book = rc.Book.from_tables(**(tables or good()))
    new, out = apply_requests(book, requests(rows))
    return book, new, out


def _reasons(out):
    return out["reason"].to_list()


def _thin_margin(balance_btc=0.5):
    """The BTCUSD short (5 × 100 USD at 61,000, mark 60,500) with 0.0003 BTC of margin."""
    t = good()
    t["positions"] = t["positions"].with_columns(pl.Series("isolated_margin", [0.0, 0.0003, 0.0, 0.0]))
    t["accounts"] = t["accounts"].with_columns(
        pl.when(pl.col("asset") == "BTC").then(balance_btc).otherwise(pl.col("balance")).alias("balance"))
    return t


def test_seed_004_add_margin_moves_available_balance_and_liq_price():
    book, new, out = _apply([dict(account_id=1, symbol="BTCUSD", op="add_margin", value=0.002)], _thin_margin())
    assert out["accepted"].to_list() == [True]
    assert new.wallets.balance[0] == book.wallets.balance[0] - 200000          # (1, BTC) wallet
    # book order: (1, BTC) wallet first, so the BTCUSD isolated short is row 0
    assert new.positions.isolated_margin[0] == book.positions.isolated_margin[0] + 200000
    before, after = rc.scan(book).positions["liq_price"][0], rc.scan(new).positions["liq_price"][0]
    assert after > before  # a short: more margin pushes the liquidation price up, away from the mark


def test_seed_004_remove_margin_checked_against_maintenance():
    # margin 0.01 + upnl 0.0000677 − fee 0.0000041 against mm 0.0000826
    _, _, out = _apply([dict(account_id=1, symbol="BTCUSD", op="remove_margin", value=0.00999),
                        dict(account_id=1, symbol="BTCUSD", op="remove_margin", value=0.02),
                        dict(account_id=1, symbol="BTCUSD", op="remove_margin", value=0.001)])
    assert _reasons(out) == ["would_liquidate", "insufficient_margin", None]


def test_seed_004_lower_leverage_pulls_margin_raise_releases_nothing():
    book, new, out = _apply([dict(account_id=1, symbol="BTCUSD", op="set_leverage", value=2.0),
                             dict(account_id=1, symbol="BTCUSD", op="set_leverage", value=40.0)], _thin_margin())
    assert out["accepted"].to_list() == [True, True]
    notional = 5 * 100 / 60500
    upnl = -5 * 100 * (1 / 61000 - 1 / 60500)
    pulled = int(np.ceil((notional / 2 - (0.0003 + upnl)) * 1e8))
    assert out["amount"].to_list()[0] == Decimal(pulled) / 10**8
    assert out["amount"].to_list()[1] == 0                                       # raising releases nothing
    assert new.positions.isolated_margin[0] == 30000 + pulled and new.positions.leverage[0] == 40.0
    assert new.wallets.balance[0] == book.wallets.balance[0] - pulled


def test_lower_leverage_rejected_when_cross_wallet_is_short():
    _, _, out = _apply([dict(account_id=1, symbol="BTCUSD", op="set_leverage", value=1.0)], _thin_margin(0.0))
    assert _reasons(out) == ["insufficient_available"]


def test_leverage_above_tier_max_and_cross_leverage():
    _, new, out = _apply([dict(account_id=1, symbol="BTCUSDT", op="set_leverage", value=126.0),
                          dict(account_id=1, symbol="BTCUSDT", op="set_leverage", value=125.0),
                          dict(account_id=2, symbol="ETHUSDT", position_side="long", op="set_leverage", value=1.0)])
    assert _reasons(out) == ["leverage_above_tier_max", None, "insufficient_available"]
    assert new.positions.leverage[1] == 125.0


def test_seed_004_no_mode_switch_with_open_position_or_orders():
    t = good()
    t["positions"] = t["positions"].with_columns(pl.Series("qty", [0.0, 0.0, 1.0, -2.0]))
    book, new, out = _apply([dict(account_id=1, symbol="BTCUSDT", op="set_margin_mode", mode="isolated"),
                             dict(account_id=1, symbol="BTCUSD", op="set_margin_mode", mode="cross"),
                             dict(account_id=2, symbol="ETHUSDT", op="set_margin_mode", mode="isolated"),
                             dict(account_id=1, symbol="BTCUSD", op="set_margin_mode", mode="lol")], t)
    assert _reasons(out) == ["open_orders", None, "open_position", "bad_value"]
    assert out["amount"].to_list()[1] == Decimal("0.01")  # the flat isolated row's margin goes home
    assert not new.positions.isolated[0] and new.positions.isolated_margin[0] == 0
    assert new.wallets.balance[0] == book.wallets.balance[0] + 1000000


def test_transfer_out_only_up_to_transferable():
    # account 2: balance 50, ETH legs long 1 @3000 and short 2 @3100 at mark 3050 → upnl +150
    _, _, out = _apply([dict(account_id=2, op="transfer_out", value=50.01, asset="USDT"),
                        dict(account_id=2, op="transfer_out", value=10.0, asset="USDT"),
                        dict(account_id=2, op="transfer_in", value=5.0, asset="USDT"),
                        dict(account_id=2, op="transfer_in", value=5.0, asset="DOGE")])
    assert _reasons(out)[0] == "insufficient_transferable"  # unrealized profit is not transferable
    assert _reasons(out)[1:] == [None, None, "unknown_account"]


def test_malformed_requests_are_rejected_not_raised():
    _, _, out = _apply([dict(account_id=1, symbol="BTCUSD", op="add_margin", value=float("nan")),
                        dict(account_id=1, symbol="BTCUSD", op="add_margin", value=-1.0),
                        dict(account_id=1, symbol="BTCUSD", op="add_margin", value=1e-12),
                        dict(account_id=1, symbol="BTCUSD", op="teleport", value=1.0),
                        dict(account_id=77, symbol="BTCUSD", op="add_margin", value=1.0),
                        dict(account_id=1, symbol="NOPE", op="add_margin", value=1.0),
                        dict(account_id=1, symbol="ETHUSDT", op="add_margin", value=1.0),
                        dict(account_id=1, symbol="BTCUSDT", op="add_margin", value=1.0),
                        dict(account_id=1, symbol="BTCUSD", position_side="long", op="add_margin", value=1.0),
                        dict(account_id=1, symbol="BTCUSD", op="set_leverage", value=0.5)])
    assert _reasons(out) == ["bad_value", "bad_value", "bad_value", "unknown_op", "unknown_account",
                             "unknown_symbol", "unknown_position", "not_isolated", "unknown_position", "bad_value"]
    assert not out["accepted"].any()


def test_bad_table_applies_nothing():
    book = rc.Book.from_tables(**good())
    with pytest.raises(rc.BookError, match="request_id listed twice"):
        apply_requests(book, requests([dict(account_id=1, op="transfer_in", value=1.0, asset="USDT")] * 2)
                       .with_columns(pl.lit(7).alias("request_id")))
    with pytest.raises(rc.BookError, match="column 'op': missing column"):
        apply_requests(book, requests([dict(account_id=1, op="transfer_in", value=1.0)]).drop("op"))
    assert list(book.wallets.balance) == [50000000, 100000000000, 5000000000]


def test_cli_apply(tmp_path, capsys):
    (tmp_path / "book").mkdir()
    for name, df in good().items():
        df.write_parquet(tmp_path / "book" / f"{name}.parquet")
    requests([dict(account_id=1, symbol="BTCUSD", op="add_margin", value=0.001),
              dict(account_id=1, op="transfer_out", value=1e9, asset="USDT")]).write_parquet(tmp_path / "req.parquet")
    assert main(["apply", str(tmp_path / "book"), str(tmp_path / "req.parquet"), "--out", str(tmp_path / "new")]) == 0
    assert "2 requests: 1 accepted; rejected by reason: insufficient_transferable 1" in capsys.readouterr().out
    out = pl.read_parquet(tmp_path / "new" / "outcomes.parquet")
    assert out["accepted"].to_list() == [True, False]
    new = rc.load_book(tmp_path / "new")
    assert new.positions.isolated_margin[0] == 1100000
