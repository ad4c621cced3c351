"""Command line (docs/model.md §10). Every command exits 2 with one line naming the file, column and
rows at fault on bad input; never a traceback."""

import argparse
import gc
import os
import sys
import time
from pathlib import Path

from .errors import BookError


# The compiled entry points each command runs (their callees compile with them).
_LOAD = ("book._wallet_ids", "book._mixed_groups", "book._derive", "money._fixed_units_kernel")
_SCAN = _LOAD + ("kernels.scan_pass",)
_MOVES = ("money._run_sums",)  # Book.apply_moves
_AMOUNTS = ("money.decimal_places", "money.amounts_kernel")  # exact settlement and close amounts
_TICKS = _SCAN + ("engine.state.symbol_major", "engine.state._take", "engine.screen._keys")  # every engine start
KERNELS_OF = {"scan": _SCAN, "report": _TICKS, "apply": _SCAN + _MOVES + ("ops.apply_kernel",), "replay": _TICKS,
              "demo": _TICKS, "bench": _TICKS + ("ops.apply_kernel",), "settle": _LOAD + _MOVES + _AMOUNTS}


def _cold_cache_notice(command: str) -> None:
    """Say so when this run will compile kernels: one the command runs has no cache index
    yet (the first run after install or an upgrade, or caching turned off)."""
    import importlib

    from . import config
    for name in KERNELS_OF.get(command, ()):
        module, function = name.rsplit(".", 1)
        kernel = getattr(importlib.import_module(f"riskcore.{module}"), function)
        code = kernel.py_func.__code__
        index = (Path(code.co_filename).parent / "__pycache__" / f"{Path(code.co_filename).stem}.{function}-"
                 f"{code.co_firstlineno}.py{sys.version_info.major}{sys.version_info.minor}.nbi")
        if not config.CACHE or not index.exists():
            print(f"riskcore: compiling kernels for {command} (first run after install: a few seconds) ...",
                  file=sys.stderr, flush=True)
            return


def cmd_gen(args) -> None:
    from .gen import generate
    from .io import write_tables
    from .output import check_output, output_dir
    check_output(args.out, command="gen", force=args.force)
    t = time.perf_counter()
    tables = generate(args.accounts, args.positions, args.symbols, args.seed, args.tiers)
    with output_dir(args.out, command="gen", force=args.force) as tmp:
        write_tables(tables, tmp)
        if args.ticks:
            from .gen import generate_ticks
            generate_ticks(tables, args.ticks, args.seed, feed=args.feed,
                           interval_ms=args.tick_interval_ms).write_parquet(tmp / "ticks.parquet")
    print(f"wrote {args.positions:,} positions, {tables['accounts'].height:,} wallets of {args.accounts:,} accounts, "
          f"{args.symbols} symbols to {args.out} in {time.perf_counter() - t:.1f} s")


def cmd_scan(args) -> None:
    from .io import load_book
    from .output import check_output, output_dir
    from .scan import scan, write_scan
    if args.out:
        check_output(args.out, command="scan", inputs=(args.book, args.marks), force=args.force)
    t = time.perf_counter()
    book = load_book(args.book, marks=args.marks)
    loaded = time.perf_counter()
    options = dict(liq_prices=not args.no_liq_price, columns=args.columns)
    if args.out:
        with output_dir(args.out, command="scan", inputs=(args.book, args.marks), force=args.force) as tmp:
            print(write_scan(book, tmp, **options))
        print(f"wrote positions.parquet and accounts.parquet to {args.out}")
    else:
        print(scan(book, **options).summary())
    print(f"load {loaded - t:.2f} s, total {time.perf_counter() - t:.2f} s")


def cmd_apply(args) -> None:
    from .io import book_tables, load_book, read_table, write_parquet, write_tables
    from .ops import apply_requests
    from .output import check_output, output_dir
    check_output(args.out, command="apply", inputs=(args.book, args.requests), force=args.force)
    t = time.perf_counter()
    book = load_book(args.book)
    requests = read_table(args.requests)
    loaded = time.perf_counter()
    new, outcomes = apply_requests(book, requests, table=str(args.requests))
    applied = time.perf_counter()
    with output_dir(args.out, command="apply", inputs=(args.book, args.requests), force=args.force) as tmp:
        write_tables(book_tables(new), tmp)
        write_parquet(outcomes, tmp / "outcomes.parquet")
    counts = outcomes.group_by("reason").len().sort("len", descending=True)
    print(f"{outcomes.height:,} requests: {int(outcomes['accepted'].sum()):,} accepted; rejected by reason: "
          + (", ".join(f"{r['reason']} {r['len']:,}" for r in counts.iter_rows(named=True) if r["reason"]) or "none"))
    print(f"wrote the new book and outcomes.parquet to {args.out} "
          f"(load {loaded - t:.2f} s, apply {applied - loaded:.2f} s, write {time.perf_counter() - applied:.2f} s)")


def cmd_replay(args) -> None:
    import numpy as np
    import polars as pl

    from .engine import EVENT_KINDS
    from .engine.durable import SNAPSHOT_EVERY, ReplayState, digest
    from .io import book_tables, write_parquet, write_tables
    from .output import check_output, output_dir
    inputs = (args.book, args.ticks, args.insurance_fund)
    check_output(args.out, command="replay", inputs=inputs, force=args.force)
    if args.state is not None:  # its folder is neither an input nor the output
        check_output(args.state, command="replay --state", inputs=inputs + (args.out,), force=True)
    if args.state is None and (args.resume or args.snapshot_every is not None):
        raise BookError("replay", None, "--resume and --snapshot-every need --state STATE")
    state, engine, first = None, None, 0
    if args.state is not None:  # where the run stands comes from the state, never from the user
        identity = dict(book=digest(args.book), tick_file=digest(args.ticks), insurance_fund=digest(args.insurance_fund),
                        liquidate=args.liquidate, snapshot_every=args.snapshot_every or SNAPSHOT_EVERY)
        if args.resume:
            state, engine, replay = ReplayState.resume(args.state, identity)
            first = replay["next_tick"]
        else:
            state = ReplayState.start(args.state, identity)
    try:
        engine, latency, skipped = _replay(args, engine, state, first)
        events = engine.events() if state is None else state.events()
    finally:
        if state is not None:
            state.close()  # the next run may take the state (a resume in this process too)
    with output_dir(args.out, command="replay", inputs=(args.book, args.ticks, args.insurance_fund),
                    force=args.force) as tmp:
        write_parquet(events, tmp / "events.parquet")
        if args.liquidate:
            write_parquet(engine.insurance_fund(), tmp / "insurance_fund.parquet")
            write_tables(book_tables(engine.current_book()), tmp / "book")
    lat = np.array(latency) * 1e3
    if len(lat):
        print(f"{len(lat):,} ticks in {lat.sum() / 1e3:.2f} s: {len(lat) / (lat.sum() / 1e3):,.0f} ticks/s; "
              f"latency per tick p50 {np.percentile(lat, 50):.3f} ms, p99 {np.percentile(lat, 99):.3f} ms, "
              f"max {lat.max():.3f} ms")
    counts = events["kind"].cast(pl.String).value_counts()
    by_kind = dict(zip(counts["kind"], counts["count"]))
    print("events: " + ", ".join(f"{k} {by_kind.get(k, 0):,}" for k in EVENT_KINDS))
    if skipped:
        print(f"skipped {len(skipped)} bad tick(s), nothing of them applied:", file=sys.stderr)
        for line in skipped[:5]:
            print(f"  {line}", file=sys.stderr)
    print("wrote events.parquet" + (", insurance_fund.parquet and book/" if args.liquidate else "")
          + f" to {args.out}")


def _replay(args, engine, state, first: int):
    """The ticks of args.ticks from tick `first` on through `engine` (a new one from the book
    when None), snapshotting and journalling into `state` when there is one. Returns (the
    engine, per-tick latencies, lines for the skipped bad ticks)."""
    import numpy as np
    from tqdm import tqdm

    from .engine import Engine, TickError, load_ticks
    from .engine.durable import JOURNAL_EVERY
    from .io import load_book, read_table
    book = load_book(args.book) if engine is None else engine.book
    # Ticks are runs of rows with equal ts, in file order; the whole file is checked and
    # names are mapped to ids once, before anything runs.
    ts, sym, price, names = load_ticks(read_table(args.ticks), book, str(args.ticks))
    bounds = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1], True]) if len(ts) else np.zeros(1, np.int64)
    n_ticks = len(bounds) - 1
    if engine is None:
        fund = read_table(args.insurance_fund) if args.insurance_fund else None
        engine = Engine(book, liquidate=args.liquidate, insurance_fund=fund,
                        fund_name=str(args.insurance_fund) if args.insurance_fund else "insurance_fund")
        if state is not None:
            state.snapshot(engine, dict(next_tick=0))
    latency, skipped = [], []
    for k in tqdm(range(first, n_ticks), total=n_ticks, initial=first, unit="tick", file=sys.stderr,
                  disable=not sys.stderr.isatty()):
        a, b = bounds[k], bounds[k + 1]
        t = time.perf_counter()
        try:
            if np.any(sym[a:b] < 0):
                engine.symbol_ids(names[a:b], ts[a])  # raises, naming the unknown symbols
            engine.on_symbol_marks(sym[a:b], price[a:b], ts[a])
            latency.append(time.perf_counter() - t)
        except TickError as e:
            skipped.append(f"{e} (rows {a}..{b - 1} of {args.ticks})")
        if state is not None and (k + 1) % state.every == 0:
            state.snapshot(engine, dict(next_tick=k + 1))
        elif state is not None and (k + 1) % JOURNAL_EVERY == 0:
            state.flush(engine)
    if state is not None:
        state.snapshot(engine, dict(next_tick=n_ticks))
    return engine, latency, skipped


def cmd_report(args) -> None:
    from .io import load_book
    from .output import check_files
    from .report import GENERATOR, scenarios_path, write_report
    inputs = (args.book, args.marks, args.insurance_fund)
    check_files([args.out, scenarios_path(args.out)], command="report", inputs=inputs, force=args.force,
                marker=GENERATOR)
    t = time.perf_counter()
    book = load_book(args.book, marks=args.marks)
    with _progress("scenario") as bar:  # the fund as its path: errors name the file
        report = write_report(book, args.out, insurance_fund=args.insurance_fund, coins=args.coins, force=args.force,
                              inputs=inputs, progress=bar)
    s = report.stress.scenarios
    worst = s.sort("deficit", descending=True).row(0, named=True)
    print(f"{s.height} scenarios through the engine's liquidation; worst deficit {worst['deficit']:,.0f} "
          f"{report.stress.quote} ({worst['scenario']}: {worst['wallets_liquidated']:,} wallets and "
          f"{worst['isolated_liquidated']:,} isolated positions liquidated, fund shortfall "
          f"{worst['fund_shortfall']:,.0f})")
    print(f"wrote {args.out} and {scenarios_path(args.out).name} in {time.perf_counter() - t:.1f} s "
          f"(scan {report.seconds['scan']:.1f} s, scenarios {report.seconds['stress']:.1f} s, "
          f"page {report.seconds['page']:.1f} s)")


class _progress:
    """A progress bar on stderr when it is a terminal (nothing otherwise), fed one named step
    at a time: `with _progress("scenario") as step: step("all-10%")`."""

    def __init__(self, unit: str, total: int | None = None):
        self.unit, self.total, self.bar = unit, total, None

    def __enter__(self):
        from tqdm import tqdm
        self.bar = tqdm(total=self.total, unit=self.unit, file=sys.stderr, disable=not sys.stderr.isatty(),
                        leave=False)
        self.started = False
        return self

    def __call__(self, name: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_description(name, refresh=True)

    def __exit__(self, *exc):
        self.bar.close()


def cmd_settle(args) -> None:
    from .settle import settle
    steps = tuple(s.strip() for s in args.steps.split(",") if s.strip())
    parts = {} if args.part_rows is None else {"part_rows": args.part_rows}  # settle.PART_ROWS by default
    result = settle(args.book, args.out, marks=args.marks, funding=args.funding, settlement_id=args.id,
                    steps=steps, progress=True, force=args.force, **parts)
    print(result.summary())
    print(f"wrote the settled book, its settlements table and ledger.parquet to {args.out}")


def cmd_bench(args) -> None:
    from .bench import run, table, write_json
    report = run(args.positions, args.seed, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(table(report))
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")


RISK_LEGEND = ("risk ratio = (maintenance margin + closing fee) / equity (isolated: / margin balance); "
               "at 1 or above it is liquidated; inf means equity is zero or below")


def cmd_demo(args) -> None:
    """What a risk desk looks at, from nothing: a synthetic book, its scan, a few minutes of
    believable marks through the engine with forced liquidation, and the risk report; all
    of it written to OUT (default demo_out/)."""
    import polars as pl

    from .book import Book
    from .gen import generate, generate_ticks
    from .io import write_parquet, write_tables
    from .output import check_output, output_dir
    from .report import build_report
    from .scan import scan
    started = time.perf_counter()
    check_output(args.out, command="demo", force=args.force)
    print(f"generating a synthetic book: {args.positions:,} positions, {args.accounts:,} accounts, "
          f"{args.symbols} symbols (seed {args.seed}; riskcore gen makes any size)")
    tables = generate(args.accounts, args.positions, args.symbols, args.seed)
    book = Book.from_tables(**tables)
    scan(book, columns=["liquidate"])  # the first call may compile; the timed one below is warm
    result = scan(book)
    print(result.summary())
    print(f"  ({RISK_LEGEND})")
    pos = result.positions
    near = (pos.filter(pl.col("liq_price").is_not_null() & (pl.col("qty") != 0) & ~pl.col("liquidate"))
            .join(tables["marks"].select("symbol", "mark_price").with_columns(pl.col("symbol").cast(pl.Categorical)),
                  on="symbol", how="left")
            .with_columns(distance=(pl.col("liq_price") / pl.col("mark_price") - 1).abs())
            .sort("distance").head(5))
    print("closest to liquidation (how far the mark must move):")
    for r in near.iter_rows(named=True):
        print(f"  account {r['account_id']} {r['symbol']:<10} {r['position_side']:<5} {r['margin_mode']:<8} "
              f"qty {r['qty']:>14,.4f}  mark {r['mark_price']:>12,.6g}  liq {r['liq_price']:>12,.6g}  "
              f"({r['distance']:.4%})")
    fund = pl.DataFrame({"asset": book.assets, "balance": [DEMO_FUND_USDT if a == "USDT" else DEMO_FUND_COIN
                                                            for a in book.assets]})
    ticks = generate_ticks(tables, args.ticks, args.seed)
    events = _demo_replay(book, ticks, fund)
    print("the risk report: the stress ladder through the same forced liquidation (each scenario on its own copy "
          "of the book), the liquidation map, the distribution of risk")
    with _progress("scenario") as bar:
        report = build_report(book, insurance_fund=fund, progress=bar)
    ladder = report.stress.scenarios
    q = report.stress.quote
    print(f"  {ladder.height} scenarios in {report.seconds['stress']:.1f} s, for example:")
    for r in ladder.filter(pl.col("scenario").is_in(["all-10%", "all-30%", "all+10%", "market-20%"])).iter_rows(
            named=True):
        print(f"  {r['scenario']:<11} wallets liquidated {r['wallets_liquidated']:>6,}, isolated {r['isolated_liquidated']:>6,}, "
              f"notional {r['notional_liquidated']:>15,.0f} {q}, deficit {r['deficit']:>13,.0f}, "
              f"fund shortfall {r['fund_shortfall']:>13,.0f}, ADL {r['adl_notional']:>13,.0f}")
    with output_dir(args.out, command="demo", force=args.force) as tmp:
        write_tables(tables, tmp / "book")
        write_parquet(ticks, tmp / "ticks.parquet")
        write_parquet(result.positions, tmp / "positions.parquet")
        write_parquet(result.accounts, tmp / "accounts.parquet")
        write_parquet(events, tmp / "events.parquet")
        write_parquet(ladder, tmp / "report.scenarios.parquet")
        (tmp / "report.html").write_text(report.html)
    print(f"wrote {args.out}/: report.html (open it in a browser), report.scenarios.parquet, the book (book/), "
          f"ticks.parquet, the scan's positions.parquet and accounts.parquet, the replay's events.parquet "
          f"({time.perf_counter() - started:.1f} s in all)")
    print(f"next: riskcore report {args.out}/book --out risk.html; riskcore replay {args.out}/book "
          f"{args.out}/ticks.parquet --liquidate --out replay_out")


DEMO_FUND_USDT, DEMO_FUND_COIN = 1_000_000.0, 10.0   # the demo's insurance fund per asset


def _demo_replay(book, ticks, fund):
    """A few minutes of market: all-symbol 1-second ticks through the engine, liquidations
    executed; returns the events of the ticks (not those at load)."""
    import numpy as np
    import polars as pl
    from tqdm import tqdm

    from .engine import Engine
    engine = Engine(book, liquidate=True, insurance_fund=fund)
    at_load = engine.next_seq
    ids = engine.symbol_ids(ticks["symbol"])
    price, ts = ticks["mark_price"].to_numpy(), ticks["ts"].to_numpy()
    bounds = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1], True])
    latency = []
    for k in tqdm(range(len(bounds) - 1), unit="tick", file=sys.stderr, disable=not sys.stderr.isatty(), leave=False):
        a, b = bounds[k], bounds[k + 1]
        t = time.perf_counter()
        engine.on_symbol_marks(ids[a:b], price[a:b], ts[a])
        latency.append(time.perf_counter() - t)
    lat = np.array(latency) * 1e3
    ev = engine.events(since_seq=at_load)
    counts = ev["kind"].cast(pl.String).value_counts(sort=True)
    minutes = (len(bounds) - 1) / 60
    print(f"replayed {len(bounds) - 1} all-symbol ticks, 1 s apart ({minutes:.1f} minutes of believable marks: "
          f"riskcore gen --ticks) through the engine with forced liquidation, after closing what was liquidatable "
          f"at load ({at_load:,} events): p50 {np.percentile(lat, 50):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms "
          f"per tick")
    print("  events: " + (", ".join(f"{r['kind']} {r['count']:,}" for r in counts.iter_rows(named=True)) or "none"))
    return ev


def _count(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high] (argparse then exits 2 naming the option)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be between {low:,} and {high:,}, got {value:,}" if high is not None
                                             else f"must be at least {low:,}, got {value:,}")
        return value
    return parse


SEED = _count(0, 2**32 - 1)


def _scan_columns(text: str) -> list[str]:
    """An argparse type: comma-separated scan output columns, checked against the scan's own
    lists (an unknown name exits 2 naming it)."""
    from .scan import output_columns
    names = [name.strip() for name in text.split(",") if name.strip()]
    try:
        output_columns(names)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return names


class _Version(argparse.Action):
    """`riskcore --version`: the installed version (looked up only when asked)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print riskcore's version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from . import __version__
        print(f"riskcore {__version__}")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line and exit 2, like every other refusal (`--help` shows usage)."""

    def error(self, message):
        self.exit(2, f"riskcore: error: {self.prog}: {message}\n")


def _add_force(parser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="replace OUT even if it is a non-empty folder riskcore did not write, or the output of "
                             "another command (never an input) (default off)")


GEN_EPILOG = """\
the tick model (gen --ticks; riskcore.gen.tick_model lists the numbers per symbol):
  every coin's log price = beta x market factor + its own noise + jumps;
  market factor: 55% annualised vol, 12 market-wide jumps a year (mean 2.5%, 60% down);
  vol: BTC 60%, ETH 70%, other majors 50-130%, other coins 90% (most held) to 200% (thinnest);
  beta 0.8-1.3 (BTC 1); a coin's own jumps 6 (most held) to 40 (thinnest) a year, mean size
  4% x vol; every contract of a coin (linear and inverse) follows the coin times a premium
  that reverts to 0 (sd 2 bp, half-life 5 min). Starts at the book's marks.
"""


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="riskcore", description="Vectorised risk engine for crypto-futures books. "
                                             "`riskcore COMMAND --help` describes each command's options.")
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("gen", help="write a realistic synthetic book as Parquet", epilog=GEN_EPILOG,
                       description="Write a realistic synthetic book (and optionally a tick stream) as Parquet;\n"
                                   "deterministic for a seed.", formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("out", type=Path, metavar="OUT/", help="the book folder to write")
    g.add_argument("--accounts", type=_count(1), default=100_000, help="accounts (default 100,000)")
    g.add_argument("--positions", type=_count(1), default=1_000_000, help="position rows (default 1,000,000)")
    g.add_argument("--symbols", type=_count(1), default=200, help="instruments, ~5%% of them inverse (default 200)")
    g.add_argument("--tiers", type=_count(1), default=10, help="risk tiers per symbol, 1-10 (default 10)")
    g.add_argument("--seed", type=SEED, default=0, help="random seed; same seed, same files (default 0)")
    g.add_argument("--ticks", type=_count(0), default=0,
                   help="also write OUT/ticks.parquet with this many ticks (default 0: none)")
    g.add_argument("--feed", choices=("all", "symbol"), default="all",
                   help="ticks of every symbol at once (all: the 1-second desk feed), or updates of one "
                        "symbol each (symbol: popular symbols more often) (default all)")
    g.add_argument("--tick-interval-ms", type=_count(1), metavar="MS",
                   help="milliseconds between ticks (all) or mean gap between updates (symbol) "
                        "(default 1,000 for all, 100 for symbol)")
    _add_force(g)
    g.set_defaults(func=cmd_gen)

    s = sub.add_parser("scan", help="figures, liquidation flags and prices for every position and account")
    s.add_argument("book", type=Path, metavar="BOOK/", help="the book folder")
    s.add_argument("--marks", type=Path, metavar="FILE", help="marks Parquet file (default: BOOK/marks)")
    s.add_argument("--out", type=Path, metavar="DIR",
                   help="write positions.parquet and accounts.parquet here (default: only the summary)")
    s.add_argument("--no-liq-price", action="store_true", help="skip liquidation prices, faster (default: computed)")
    s.add_argument("--columns", type=_scan_columns, metavar="A,B,...",
                   help="only these positions/accounts columns (keys always kept; liquidation prices are "
                        "computed only if liq_price is named) (default: every column)")
    _add_force(s)
    s.set_defaults(func=cmd_scan)

    a = sub.add_parser("apply", help="apply a batch of margin requests (docs/model.md §7)")
    a.add_argument("book", type=Path, metavar="BOOK/", help="the book folder")
    a.add_argument("requests", type=Path, metavar="REQUESTS.parquet", help="the margin requests, applied in order")
    a.add_argument("--out", type=Path, metavar="DIR", required=True,
                   help="the new book and outcomes.parquet (required)")
    _add_force(a)
    a.set_defaults(func=cmd_apply)

    r = sub.add_parser("replay", help="replay a tick stream through the engine (docs/model.md §8)")
    r.add_argument("book", type=Path, metavar="BOOK/", help="the book folder")
    r.add_argument("ticks", type=Path, metavar="TICKS.parquet", help="columns ts, symbol, mark_price")
    r.add_argument("--out", type=Path, metavar="DIR", required=True,
                   help="events.parquet, and with --liquidate the fund and the book after the closes (required)")
    r.add_argument("--liquidate", action="store_true",
                   help="execute forced closes, insurance fund and ADL (default: report liquidations only)")
    r.add_argument("--insurance-fund", type=Path, metavar="FILE", help="asset, balance (default 0 everywhere)")
    r.add_argument("--state", type=Path, metavar="STATE",
                   help="keep the run resumable here: snapshots of the engine and the events journal "
                        "(default: not resumable)")
    r.add_argument("--snapshot-every", type=_count(1), metavar="N",
                   help="ticks between snapshots (with --state; default 1,000)")
    r.add_argument("--resume", action="store_true",
                   help="go on from the newest whole snapshot in --state (same inputs and options) (default off)")
    _add_force(r)
    r.set_defaults(func=cmd_replay)

    st = sub.add_parser("settle", help="nightly funding and daily settlement, exact ledger (docs/model.md §9)")
    st.add_argument("book", type=Path, metavar="BOOK/", help="the book folder")
    st.add_argument("--marks", type=Path, required=True, metavar="FILE",
                    help="settlement prices (symbol, mark_price) (required)")
    st.add_argument("--funding", type=Path, metavar="FILE", help="symbol, funding_rate (default: the marks' funding_rate)")
    st.add_argument("--id", required=True, help="settlement id; a book refuses an id it has applied (required)")
    st.add_argument("--steps", default="funding,realize", help="funding, realize or both (default funding,realize)")
    st.add_argument("--out", type=Path, required=True, metavar="DIR",
                    help="the settled book and ledger.parquet (required)")
    st.add_argument("--part-rows", type=int, help="positions per streamed part (bounds memory; default 500,000)")
    _add_force(st)
    st.set_defaults(func=cmd_settle)

    rp = sub.add_parser("report", help="a self-contained HTML risk report: stress ladder, liquidation map, "
                                       "risk distribution",
                        description="Write one self-contained HTML page (opens offline) with the stress ladder run "
                                    "through the engine's liquidation, a liquidation map per symbol and the "
                                    "distribution and concentration of risk, and the scenario table beside it "
                                    "(report.html -> report.scenarios.parquet).")
    rp.add_argument("book", type=Path, metavar="BOOK/", help="the book folder")
    rp.add_argument("--out", type=Path, required=True, metavar="FILE.html", help="the page to write (required)")
    rp.add_argument("--marks", type=Path, metavar="FILE", help="marks Parquet file (default: BOOK/marks)")
    rp.add_argument("--insurance-fund", type=Path, metavar="FILE",
                    help="asset, balance: the fund every scenario starts with (default: empty, so every deficit "
                         "goes to auto-deleveraging)")
    rp.add_argument("--coins", type=_count(0), default=3,
                    help="the largest coins shocked alone, -20%% and +20%% each (default 3)")
    _add_force(rp)
    rp.set_defaults(func=cmd_report)

    b = sub.add_parser("bench", help="the performance table: riskcore, baselines and bandwidth floor")
    b.add_argument("--positions", type=_count(1), default=1_000_000,
                   help="positions of the generated book measured (default 1,000,000)")
    b.add_argument("--seed", type=SEED, default=0, help="seed of the generated book (default 0)")
    b.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON (default: none)")
    b.set_defaults(func=cmd_bench)

    d = sub.add_parser("demo", help="generate a book, scan it, replay ticks, write the risk report to demo_out/",
                       description="The first minutes with riskcore: a synthetic book, its scan, a few minutes of "
                                   "believable marks through the engine with forced liquidation, and the HTML risk "
                                   "report, all written to OUT.")
    d.add_argument("--accounts", type=_count(1), default=1_000, help="accounts (default 1,000)")
    d.add_argument("--positions", type=_count(1), default=10_000, help="position rows (default 10,000)")
    d.add_argument("--symbols", type=_count(1), default=40, help="instruments (default 40)")
    d.add_argument("--ticks", type=_count(1), default=300, help="all-symbol ticks, 1 s apart (default 300)")
    d.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    d.add_argument("--out", type=Path, default=Path("demo_out"), metavar="DIR",
                   help="where everything is written (default demo_out)")
    _add_force(d)
    d.set_defaults(func=cmd_demo)
    return p


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null so Python's final flush cannot fail again (the recipe of the
    Python docs for SIGPIPE)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (e.g. captured)
        sys.stdout = open(os.devnull, "w")


def _bugs() -> tuple[type[BaseException], ...]:
    """What an internal error is: any Exception, and a polars panic (a BaseException) once
    polars is loaded (a command that never imported it cannot raise one)."""
    polars = sys.modules.get("polars")
    return (Exception, polars.exceptions.PanicException) if polars else (Exception,)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _cold_cache_notice(args.command)
        args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:  # `riskcore ... | head`: the reader has gone; stop quietly
        _stdout_to_devnull()
        return 141
    except BookError as e:
        print(f"riskcore: error: {e}", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as e:
        name = getattr(e, "filename", None)
        print(f"riskcore: error: {e}" + (f" ({name})" if name and str(name) not in str(e) else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("riskcore: interrupted", file=sys.stderr)
        return 130
    except _bugs() as e:  # still one line for the user; RISKCORE_DEBUG=1 shows the traceback
        if os.environ.get("RISKCORE_DEBUG"):
            raise
        print(f"riskcore: internal error: {type(e).__name__}: {e} (RISKCORE_DEBUG=1 for details)", file=sys.stderr)
        return 1
    return 0


def program() -> None:
    """The `riskcore` program (console script and `python -m riskcore`): main, then exit
    without the interpreter's last garbage collections, which walk numba's and polars'
    object graphs for nothing (~0.2 s of a small scan's 0.9 s)."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    program()
