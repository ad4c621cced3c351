"""The stress ladder and the risk report: scenario figures against hand-computed closes, the
page self-contained and rendered in a real browser, the Parquet beside it, the CLI."""

import json
import re
import shutil
import subprocess
import zlib

import numpy as np
import polars as pl
import pytest

import riskcore as rc
from riskcore.cli import main
from riskcore.gen import generate
from riskcore.report import scenarios_path, write_report
from riskcore.stress import SCENARIO_COLUMNS, Scenario, scenarios, stress


def desk():
    """Three wallets, marks at 10,000, no fees but the liquidation fee (1% on BTCUSDT):
    account 1 long 1 BTCUSDT from 10,000 with 1,000 USDT; account 2 short 2 BTCUSDT from
    10,000 with 1,000,000 USDT (the ADL counterparty); account 3 long 100 BTCUSD (inverse,
    face 100) from 10,000, isolated with 0.02 BTC."""
    return dict(
        instruments=pl.DataFrame({"symbol": ["BTCUSDT", "BTCUSD"], "contract_type": ["linear", "inverse"],
                                  "settle_asset": ["USDT", "BTC"], "face_value": [1.0, 100.0],
                                  "taker_fee_rate": [0.0, 0.0], "liquidation_fee_rate": [0.01, 0.0]}),
        risk_tiers=pl.DataFrame({"symbol": ["BTCUSDT", "BTCUSD"], "notional_floor": [0.0, 0.0],
                                 "mmr": [0.01, 0.01], "max_leverage": [50.0, 50.0]}),
        accounts=pl.DataFrame({"account_id": [1, 2, 3], "asset": ["USDT", "USDT", "BTC"],
                               "balance": [1000.0, 1e6, 0.0]}),
        positions=pl.DataFrame({"account_id": [1, 2, 3], "symbol": ["BTCUSDT", "BTCUSDT", "BTCUSD"],
                                "position_side": ["both", "both", "both"], "qty": [1.0, -2.0, 100.0],
                                "entry_price": [10000.0, 10000.0, 10000.0],
                                "margin_mode": ["cross", "cross", "isolated"], "leverage": [10.0, 10.0, 50.0],
                                "isolated_margin": [0.0, 0.0, 0.02]}),
        marks=pl.DataFrame({"symbol": ["BTCUSDT", "BTCUSD"], "mark_price": [10000.0, 10000.0]}))


def row(result, name):
    return result.scenarios.filter(pl.col("scenario") == name).row(0, named=True)


def test_ladder_names_and_factors():
    book = rc.Book.from_tables(**generate(300, 3000, 40, seed=2))
    ladder = scenarios(book, coins=2)
    names = [s.name for s in ladder]
    assert names[:21] == ["base"] + [f"all-{p}%" for p in range(50, 0, -5)] + [f"all+{p}%" for p in range(5, 55, 5)]
    assert names[21:] == ["BTC-20%", "BTC+20%", "ETH-20%", "ETH+20%", "market-20%"]
    sym = book.instruments.symbol
    by = {s.name: dict(zip(sym, s.factor)) for s in ladder}
    assert by["all-10%"]["SOLUSDT"] == pytest.approx(0.9)
    assert by["BTC-20%"]["BTCUSDT"] == by["BTC-20%"]["BTCUSD"] == pytest.approx(0.8)   # linear and inverse together
    assert by["BTC-20%"]["ETHUSDT"] == 1.0
    market = by["market-20%"]
    assert market["BTCUSDT"] == pytest.approx(0.8) and market["ETHUSDT"] == pytest.approx(0.8 ** 1.2)
    assert market["C0001USDT"] == pytest.approx(0.8 ** 1.5)


def test_scenarios_against_hand_computed_closes():
    empty = stress(rc.Book.from_tables(**desk()))
    assert empty.scenarios.columns == list(SCENARIO_COLUMNS) and empty.quote == "USDT"
    # −5%: the isolated inverse long is bankrupt: 10,000·(1/10,000 − 1/9,500) BTC = −0.05263158 (floored to
    # the unit) against its 0.02 BTC; nobody is short BTCUSD, so the empty fund covers it and ends below 0.
    deficit_btc = 0.05263158 - 0.02
    r = row(empty, "all-5%")
    assert (r["wallets_liquidated"], r["isolated_liquidated"], r["positions_closed"], r["adl_positions"]) == (0, 1, 1, 0)
    assert r["notional_liquidated"] == pytest.approx(10_000.0)          # 100 contracts of 100 USD
    assert r["deficit"] == pytest.approx(deficit_btc * 9500, rel=1e-9)
    assert r["fund_used"] == pytest.approx(deficit_btc * 9500, rel=1e-9)
    assert r["fund_shortfall"] == pytest.approx(deficit_btc * 9500, rel=1e-9)
    # −20%: account 1 loses 2,000 against 1,000: bankrupt by 1,000, auto-deleveraged against account 2's
    # short at the bankruptcy price 9,000; the isolated long loses 0.25 BTC against 0.02 (fund below 0)
    r = row(empty, "all-20%")
    assert (r["wallets_liquidated"], r["isolated_liquidated"], r["positions_closed"], r["adl_positions"]) == (1, 1, 2, 1)
    assert r["notional_liquidated"] == pytest.approx(8000.0 + 10_000.0)
    assert r["adl_notional"] == pytest.approx(8000.0)
    assert r["deficit"] == pytest.approx(1000.0 + 0.23 * 8000, rel=1e-9)
    assert r["fund_used"] == pytest.approx(0.23 * 8000, rel=1e-9)
    assert r["fund_shortfall"] == pytest.approx(0.23 * 8000, rel=1e-9)
    assert row(empty, "BTC-20%") == {**r, "scenario": "BTC-20%", "kind": "coin", "seconds": row(empty, "BTC-20%")["seconds"]}
    for name in ("base", "all+5%", "all+50%"):   # everyone solvent
        r = row(empty, name)
        assert r["positions_closed"] == 0 and r["deficit"] == 0 and r["fund_shortfall"] == 0
    # a fund that can pay: no ADL, no shortfall, the fund pays the deficit
    fund = pl.DataFrame({"asset": ["USDT", "BTC"], "balance": [5000.0, 1.0]})
    funded = stress(rc.Book.from_tables(**desk()), insurance_fund=fund)
    r = row(funded, "all-20%")
    assert r["adl_positions"] == 0 and r["adl_notional"] == 0 and r["fund_shortfall"] == 0
    assert r["deficit"] == pytest.approx(1000.0 + 0.23 * 8000, rel=1e-9) == pytest.approx(r["fund_used"], rel=1e-9)
    # −9.5% on BTCUSDT alone: account 1 keeps 50 of its 1,000, less than the 90.50 fee: the fund takes 50
    mark = Scenario("fee", "custom", np.array([1.0, 0.905]))  # instruments sorted: BTCUSD, BTCUSDT
    r = stress(rc.Book.from_tables(**desk()), insurance_fund=fund, ladder=[mark]).scenarios.row(0, named=True)
    assert (r["wallets_liquidated"], r["isolated_liquidated"], r["deficit"]) == (1, 0, 0.0)
    assert r["fund_fees"] == pytest.approx(50.0)
    assert r["notional_liquidated"] == pytest.approx(9050.0)


def test_stress_leaves_the_book_alone():
    book = rc.Book.from_tables(**desk())
    before = (book.positions.qty.copy(), book.wallets.balance.copy(), book.positions.isolated_margin.copy())
    stress(book)
    assert all(np.array_equal(a, b) for a, b in zip(before, (book.positions.qty, book.wallets.balance,
                                                            book.positions.isolated_margin)))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A report of a small synthetic book, written as the CLI writes it."""
    folder = tmp_path_factory.mktemp("report")
    tables = generate(300, 3000, 40, seed=3)
    book = rc.Book.from_tables(**tables)
    fund = pl.DataFrame({"asset": book.assets, "balance": [1e5 if a == "USDT" else 1.0 for a in book.assets]})
    out = folder / "report.html"
    write_report(book, out, insurance_fund=fund)
    return out


def test_page_is_self_contained(page):
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and '<meta name="generator" content="riskcore report">' in text
    assert not re.search(r'<(script|link|img|iframe)[^>]+(src|href)="(https?:)?//', text)   # nothing fetched
    for section in ("stress", "map", "risk"):
        assert f'<section id="{section}">' in text
    for fig in ("fig-ladder", "fig-coins", "fig-heatmap", "fig-maps", "fig-risk", "fig-distance"):
        assert f'id="{fig}"' in text
    assert text.count('<table class="sortable"') == 5
    table = pl.read_parquet(scenarios_path(page))
    assert table.columns == list(SCENARIO_COLUMNS) and table.height == 28
    assert table["scenario"].to_list()[:3] == ["base", "all-50%", "all-45%"]


def test_report_outputs_are_whole_and_never_foreign(tmp_path, page):
    book = rc.Book.from_tables(**desk())
    foreign = tmp_path / "mine.html"
    foreign.write_text("my notes")
    with pytest.raises(rc.BookError, match="riskcore did not write it"):
        write_report(book, foreign)
    assert foreign.read_text() == "my notes"
    write_report(book, foreign, force=True)
    assert "riskcore report" in foreign.read_text()
    write_report(book, foreign)                       # its own page: replaced without --force
    with pytest.raises(rc.BookError, match="is a folder"):
        write_report(book, tmp_path)
    assert not [p for p in tmp_path.iterdir() if ".riskcore-" in p.name]   # no staging leftovers


def _chromium():
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { __errors.push(String(e.message)); });
var __ce = console.error; console.error = function () { __errors.push([].join.call(arguments, " ")); __ce.apply(console, arguments); };
window.addEventListener("load", function () { setTimeout(function () {
  var figs = {};
  document.querySelectorAll(".js-plotly-plot").forEach(function (d) {
    figs[d.id] = d.querySelectorAll(".trace path, .hm image").length; });
  var table = document.getElementById("scenarios");
  table.querySelectorAll("th")[5].click();   // deficit: a click sorts it, largest first
  var deficits = Array.prototype.map.call(table.tBodies[0].rows, function (r) { return parseFloat(r.cells[5].getAttribute("data-v")); });
  var p = document.createElement("pre"); p.id = "probe";
  p.textContent = JSON.stringify({errors: __errors, figures: figs, deficits: deficits});
  document.body.appendChild(p); }, 1000); });
</script>"""


def _headless(browser, *args):
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=20000", *args], capture_output=True, text=True, timeout=180)


def _ink(png: bytes) -> float:
    """Share of non-zero bytes in a PNG's filtered scanlines: ~0 for a blank page (each row
    repeats the one above), far more where something is drawn."""
    data, pos = b"", 8
    while pos < len(png):
        n = int.from_bytes(png[pos:pos + 4], "big")
        if png[pos + 4:pos + 8] == b"IDAT":
            data += png[pos + 8:pos + 8 + n]
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(data), np.uint8)
    return float(np.count_nonzero(raw)) / len(raw)


def test_page_renders_in_chromium(page, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium to open the page in: install the Debian package chromium (.ci/run does)")
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    dom = _headless(browser, "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stderr[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert result["errors"] == []
    assert set(result["figures"]) == {"fig-ladder", "fig-coins", "fig-heatmap", "fig-maps", "fig-risk", "fig-distance"}
    assert all(n > 0 for n in result["figures"].values()), result["figures"]   # every plot drew its marks
    deficits = result["deficits"]
    assert len(deficits) == 28 and deficits == sorted(deficits, reverse=True) and deficits[0] > deficits[-1]
    shots = {}
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    for name, target in (("page", page), ("blank", blank)):
        out = tmp_path / f"{name}.png"
        _headless(browser, "--window-size=1280,3000", f"--screenshot={out}", target.as_uri())
        shots[name] = _ink(out.read_bytes())
    assert shots["blank"] < 0.001 and shots["page"] > 0.02, shots


def test_report_cli(tmp_path, capsys):
    book = tmp_path / "book"
    assert main(["gen", "--accounts", "200", "--positions", "2000", "--symbols", "20", str(book)]) == 0
    out = tmp_path / "r" / "risk.html"
    assert main(["report", str(book), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "28 scenarios" in said and "risk.scenarios.parquet" in said
    assert out.exists() and (tmp_path / "r" / "risk.scenarios.parquet").exists()
    assert main(["report", str(book), "--out", str(book / "x.html")]) == 2
    assert "never writes into its input" in capsys.readouterr().err


def test_report_cli_marks_fund_and_bad_input(tmp_path, capsys):
    book = tmp_path / "book"
    assert main(["gen", "--accounts", "100", "--positions", "1000", "--symbols", "12", str(book)]) == 0
    marks = pl.read_parquet(book / "marks.parquet").with_columns(pl.col("mark_price") * 0.97)
    marks.write_parquet(tmp_path / "marks.parquet")
    pl.DataFrame({"asset": ["USDT"], "balance": [1e6]}).write_parquet(tmp_path / "fund.parquet")
    out = tmp_path / "r.html"
    assert main(["report", str(book), "--marks", str(tmp_path / "marks.parquet"), "--insurance-fund",
                 str(tmp_path / "fund.parquet"), "--coins", "1", "--out", str(out)]) == 0
    table = pl.read_parquet(tmp_path / "r.scenarios.parquet")
    assert table.height == 1 + 20 + 2 + 1                              # one coin: down and up
    at_marks = table.filter(pl.col("scenario") == "base").row(0, named=True)
    direct = stress(str(book), tmp_path / "marks.parquet", insurance_fund=tmp_path / "fund.parquet",
                    ladder=[scenarios(rc.load_book(book))[0]]).scenarios.row(0, named=True)
    assert {k: v for k, v in at_marks.items() if k != "seconds"} == {k: v for k, v in direct.items() if k != "seconds"}
    capsys.readouterr()
    pl.DataFrame({"asset": ["DOGE"], "balance": [1.0]}).write_parquet(tmp_path / "bad.parquet")
    assert main(["report", str(book), "--insurance-fund", str(tmp_path / "bad.parquet"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.parquet" in err and "asset" in err


def test_liquidation_map_against_rows():
    """Every open position with a liquidation price, not liquidatable already, in its band,
    one row at a time, in USDT (a coin's notional at its linear contract's mark)."""
    from riskcore.report import MAP_BINS, MAP_RANGE, liquidation_map
    from riskcore.stress import asset_prices
    tables = generate(300, 3000, 40, seed=5)
    book = rc.Book.from_tables(**tables)
    scanned = rc.scan(book).positions
    price = asset_prices(book, book.mark)
    top, by_side = liquidation_map(book, book.mark, scanned, price)
    marks = dict(zip(tables["marks"]["symbol"], tables["marks"]["mark_price"]))
    inst = tables["instruments"]
    settle = dict(zip(inst["symbol"], inst["settle_asset"]))
    coin_usd = {a: marks[f"{a}USDT"] for a in set(settle.values()) if a != "USDT"} | {"USDT": 1.0}
    names = [book.instruments.symbol[s] for s in top]
    oi = {}
    for r in scanned.iter_rows(named=True):
        oi[r["symbol"]] = oi.get(r["symbol"], 0.0) + r["notional"] * coin_usd[settle[r["symbol"]]]
    assert names == sorted(oi, key=lambda s: -oi[s])[:len(names)]            # largest open interest first
    expected = np.zeros_like(by_side)
    for r in scanned.iter_rows(named=True):
        if r["symbol"] not in names or r["qty"] == 0 or r["liquidate"] or r["liq_price"] is None:
            continue
        move = r["liq_price"] / marks[r["symbol"]] - 1
        if abs(move) >= MAP_RANGE:
            continue
        band = min(int((move + MAP_RANGE) / (2 * MAP_RANGE) * MAP_BINS), MAP_BINS - 1)
        expected[names.index(r["symbol"]), int(r["qty"] > 0), band] += r["notional"] * coin_usd[settle[r["symbol"]]]
    assert np.allclose(by_side, expected, rtol=1e-12, atol=1e-9)
    # longs liquidate below the mark, shorts above (but for hedge-mode legs of a wallet net the other way)
    assert by_side[:, 1, :MAP_BINS // 2].sum() > 0.9 * by_side[:, 1].sum()
    assert by_side[:, 0, MAP_BINS // 2:].sum() > 0.9 * by_side[:, 0].sum()
    assert by_side.sum() > 0
