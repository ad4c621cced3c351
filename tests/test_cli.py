"""The command line: gen → scan round trip, and one-line errors (never a traceback)."""

import subprocess
import sys
from decimal import Decimal

import polars as pl
import pyarrow.parquet as pq
import pytest

from riskcore.cli import main
from riskcore import load_book

from books import good, with_value


@pytest.fixture(scope="module")
def book_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    assert main(["gen", "--accounts", "300", "--positions", "3000", "--symbols", "40", "--seed", "5", str(out)]) == 0
    return out


def test_gen_writes_every_table_with_decimal_money(book_dir):
    for name in ("instruments", "risk_tiers", "accounts", "positions", "orders", "marks"):
        assert (book_dir / f"{name}.parquet").exists()
    assert str(pq.read_schema(book_dir / "accounts.parquet").field("balance").type) == "decimal128(38, 8)"
    assert str(pq.read_schema(book_dir / "positions.parquet").field("isolated_margin").type) == "decimal128(38, 8)"


def test_scan_writes_outputs_and_summary(book_dir, tmp_path, capsys):
    assert main(["scan", str(book_dir), "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "scanned 3,000 positions" in text and "to liquidate" in text
    pos = pl.read_parquet(tmp_path / "positions.parquet")
    acc = pl.read_parquet(tmp_path / "accounts.parquet")
    assert pos.height == 3000
    assert pos.columns == ["account_id", "symbol", "position_side", "margin_mode", "qty", "notional", "upnl", "im",
                           "mm", "fee", "roe", "margin_balance", "risk_ratio", "liq_price", "liquidate"]
    assert acc.columns == ["account_id", "asset", "equity", "cross_mm", "cross_im", "cross_fee", "order_margin",
                           "risk_ratio", "available_balance", "transferable", "total_equity", "liquidate"]
    assert acc["account_id"].n_unique() == 300


def test_scan_writes_only_the_columns_asked_and_the_keys(book_dir, tmp_path, capsys):
    assert main(["scan", str(book_dir), "--out", str(tmp_path / "all")]) == 0
    assert main(["scan", str(book_dir), "--columns", "liquidate, equity,liq_price", "--out", str(tmp_path / "few")]) == 0
    assert "to liquidate" in capsys.readouterr().out  # the summary shows what the columns allow
    for table, columns in (("positions", ["account_id", "symbol", "position_side", "liq_price", "liquidate"]),
                           ("accounts", ["account_id", "asset", "equity", "liquidate"])):
        few = pl.read_parquet(tmp_path / "few" / f"{table}.parquet")
        assert few.columns == columns
        assert few.equals(pl.read_parquet(tmp_path / "all" / f"{table}.parquet").select(columns))


def test_scan_refuses_an_unknown_column_with_one_usage_line(book_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["scan", str(book_dir), "--columns", "equity,margin", "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("riskcore: error: riskcore scan: argument --columns: "
                                               "unknown column 'margin' (positions: account_id,")
    assert not (tmp_path / "o").exists()


def test_scan_with_marks_file(book_dir, tmp_path, capsys):
    marks = pl.read_parquet(book_dir / "marks.parquet").with_columns(pl.col("mark_price") * 0.5)
    marks.write_parquet(tmp_path / "crash.parquet")
    assert main(["scan", str(book_dir), "--marks", str(tmp_path / "crash.parquet"), "--out", str(tmp_path / "o")]) == 0
    crashed = pl.read_parquet(tmp_path / "o" / "accounts.parquet")["liquidate"].sum()
    assert main(["scan", str(book_dir), "--out", str(tmp_path / "p")]) == 0
    assert crashed > pl.read_parquet(tmp_path / "p" / "accounts.parquet")["liquidate"].sum()


def test_decimal_money_is_read_exactly(tmp_path):
    t = good()
    amounts = [Decimal("1000.000000025"), Decimal("0.000000015"), Decimal("50.0000000049")]
    t["accounts"] = t["accounts"].with_columns(pl.Series("balance", amounts, dtype=pl.Decimal(38, 10)))
    for name, df in t.items():
        df.write_parquet(tmp_path / f"{name}.parquet")
    book = load_book(tmp_path)
    # wallets sorted (1, BTC), (1, USDT), (2, USDT); extra places rounded half-to-even
    assert list(book.wallets.balance) == [2, 100000000002, 5000000000]


def _write_bad(tmp_path, table, column, row, value):
    t = with_value(good(), table, column, row, value)
    for name, df in t.items():
        df.write_parquet(tmp_path / f"{name}.parquet")


@pytest.mark.parametrize("table,column,row,value,words", [
    ("positions", "qty", 2, float("nan"), "positions.parquet: column 'qty': NaN or infinite value (rows 2; 1 in all)"),
    ("positions", "symbol", 1, "NOPE", "positions.parquet: column 'symbol': unknown symbol: NOPE (rows 1; 1 in all)"),
    ("marks", "mark_price", 0, -1.0, "marks.parquet: column 'mark_price': mark price must be positive (rows 0;"),
    ("positions", "margin_mode", 3, "isolated", "one account holds a symbol both cross and isolated (rows 2, 3;"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, table, column, row, value, words):
    _write_bad(tmp_path, table, column, row, value)
    assert main(["scan", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("riskcore: error: ") and words in err[0], err


def test_cli_missing_table_and_bad_file(tmp_path, capsys):
    assert main(["scan", str(tmp_path)]) == 2
    assert "instruments.parquet: missing table" in capsys.readouterr().err
    _write_bad(tmp_path, "positions", "qty", 0, 1.0)
    (tmp_path / "positions.parquet").write_text("not parquet")
    assert main(["scan", str(tmp_path)]) == 2
    assert "positions.parquet: cannot read as Parquet" in capsys.readouterr().err


def test_cli_subprocess_never_prints_a_traceback(tmp_path):
    _write_bad(tmp_path, "positions", "leverage", 1, 0.0)
    run = subprocess.run([sys.executable, "-m", "riskcore", "scan", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert "positions.parquet: column 'leverage': leverage must be >= 1 (rows 1; 1 in all)" in run.stderr


def test_folder_of_parts(book_dir, tmp_path, capsys):
    parts = tmp_path / "book"
    (parts / "positions").mkdir(parents=True)
    for name in ("instruments", "risk_tiers", "accounts", "orders", "marks"):
        (parts / f"{name}.parquet").write_bytes((book_dir / f"{name}.parquet").read_bytes())
    pos = pl.read_parquet(book_dir / "positions.parquet")
    pos.slice(0, 1000).write_parquet(parts / "positions" / "part-0.parquet")
    pos.slice(1000).write_parquet(parts / "positions" / "part-1.parquet")
    assert main(["scan", str(parts)]) == 0
    assert "scanned 3,000 positions" in capsys.readouterr().out


def test_bench_table_and_json(tmp_path, capsys, monkeypatch):
    import json
    from riskcore import bench
    monkeypatch.setattr(bench, "PROCESS_RUNS", 1)
    assert main(["bench", "--positions", "20000", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "scan: all figures + liquidation prices" in out and "vs polars" in out
    report = json.loads((tmp_path / "b.json").read_text())
    ops = {r["operation"]: r for r in report["results"]}
    assert ops["scan: flags + account figures"]["speedup_vs_polars"] > 0 and report["book"]["positions"] == 20000
    assert ops["whole process: riskcore scan --no-liq-price --out DIR"]["speedup_vs_polars"] > 0
    assert 0 < ops["whole process: polars script (no liquidation prices)"]["peak_rss_mb"]
    start_up = next(r for r in report["results"] if r["operation"].startswith("start-up"))
    assert min(start_up["import_ms"], start_up["first_scan_ms"], start_up["median_ms"]) > 0  # timings, not compared
    assert report["machine"]["vector_width"] in ("AVX-512", "AVX2", "other") and report["machine"]["cpu_model"]


def test_imports_are_lazy_and_the_api_whole():
    """The command line imports only what a command runs; the public names stay what they
    are however the modules behind them were imported first (riskcore.scan is also a module)."""
    code = """
import sys
import riskcore.cli
assert not {"numba", "polars", "pyarrow"} & set(sys.modules), sorted(sys.modules)
import riskcore.scan, riskcore.settle
import riskcore as rc
assert rc.scan.__module__ == "riskcore.scan" and callable(rc.scan) and callable(rc.settle)
assert "riskcore.engine" not in sys.modules and "riskcore.ops" not in sys.modules
assert [name for name in rc.__all__ if getattr(rc, name) is None] == [] and rc.__version__
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([sys.executable, "-m", "riskcore", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "scan" in run.stdout


def test_compiled_cache_survives_a_thread_count_change(book_dir):
    """numba #7518: cached parallel kernels once baked in the thread count; re-run from the
    cache with 1 and then 2 threads and expect identical output."""
    outputs = []
    for threads in ("1", "2", "1"):
        env = dict(__import__("os").environ, NUMBA_NUM_THREADS=threads)
        run = subprocess.run([sys.executable, "-m", "riskcore", "scan", str(book_dir)], capture_output=True,
                             text=True, env=env)
        assert run.returncode == 0, run.stderr
        outputs.append(run.stdout.splitlines()[1:-1])  # drop timings
    assert outputs[0] == outputs[1] == outputs[2]


def test_first_run_compilation_is_announced_for_the_kernels_a_command_runs(book_dir, monkeypatch, capsys):
    from riskcore import cli, config
    from riskcore.engine.state import symbol_major
    assert main(["scan", str(book_dir)]) == 0  # the scan kernels are compiled and cached now
    capsys.readouterr()
    code = symbol_major.py_func.__code__
    monkeypatch.setattr(symbol_major, "py_func", type("F", (), {"__code__": code.replace(co_firstlineno=1)})())
    for command, announced in (("replay", True), ("demo", True), ("scan", False), ("settle", False), ("gen", False)):
        cli._cold_cache_notice(command)  # as if the engine's symbol_major had never been compiled and cached
        assert ("compiling kernels for " + command in capsys.readouterr().err) == announced, command
    monkeypatch.setattr(config, "CACHE", False)
    cli._cold_cache_notice("apply")
    assert "compiling kernels for apply" in capsys.readouterr().err


def test_no_compilation_announced_once_a_command_has_run(book_dir, tmp_path, capsys):
    """The cache check finds every kernel of a command after it ran, in nested modules too
    (engine.state): a notice on every run would be a false alarm."""
    from riskcore import cli
    from riskcore.gen import generate_ticks
    from riskcore.io import book_tables, load_book
    generate_ticks(book_tables(load_book(book_dir)), 50, seed=1).write_parquet(tmp_path / "ticks.parquet")
    assert main(["replay", str(book_dir), str(tmp_path / "ticks.parquet"), "--liquidate", "--out",
                 str(tmp_path / "o")]) == 0
    capsys.readouterr()
    cli._cold_cache_notice("replay")
    assert capsys.readouterr().err == ""


def test_version_and_every_option_described_with_its_default(capsys):
    import argparse
    from importlib.metadata import version

    from riskcore.cli import build_parser
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"riskcore {version('riskcore')}"
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"gen", "scan", "apply", "replay", "settle", "report", "bench", "demo"} <= set(commands)
    for name, sub in commands.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = action.help or ""
            assert text, f"{name} {action.dest}: no help"
            if action.option_strings:  # an option says its default, or that it is required
                assert "default" in text or "required" in text, f"riskcore {name} {action.option_strings[0]}: {text}"
        sub.format_help()  # every help renders (a stray % would raise)


def test_demo_writes_its_folder_and_says_where(tmp_path, capsys):
    out = tmp_path / "demo_out"
    assert main(["demo", "--positions", "2000", "--accounts", "200", "--symbols", "20", "--ticks", "30",
                 "--out", str(out)]) == 0
    said = capsys.readouterr()
    assert "inf means equity is zero or below" in said.out and f"wrote {out}/" in said.out
    assert said.err in ("", ) or "compiling kernels" in said.err   # no progress bar off a terminal
    for name in ("report.html", "report.scenarios.parquet", "ticks.parquet", "positions.parquet",
                 "accounts.parquet", "events.parquet", "book/positions.parquet"):
        assert (out / name).exists(), name
    import polars as pl
    assert pl.read_parquet(out / "ticks.parquet").height == 30 * 20
    assert main(["scan", str(out / "book")]) == 0   # the book it wrote is a book
