"""`riskcore bench`: every hot operation on a generated book, side by side with the polars
and numpy baselines and the bandwidth floor measured in the same process, so the ratios hold
on a shared, noisy machine."""

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

from .baselines import bandwidth_floor, numpy_flags, polars_flags
from .book import Book
from .engine import Engine
from .gen import generate, generate_requests
from .io import load_book, write_tables
from .ops import apply_requests
from .scan import ScanArrays, scan_into
from .settle import settle


def _times(fn, repeats: int, budget_s: float = 20.0) -> np.ndarray:
    fn()  # warm: compilation, caches, first-touch of buffers
    out, start = [], time.perf_counter()
    while len(out) < repeats and (len(out) < 3 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return np.array(out)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


BASELINE_SCRIPT = Path(__file__).with_name("baseline_polars_scan.py")

# Where a small command's time goes: the imports a scan needs, then the first scan of a tiny
# book, which loads the cached kernels (a child process, so nothing is imported or loaded yet).
_STARTUP = """import json, sys, time
t = time.perf_counter()
import riskcore.cli
from riskcore.scan import scan
imported = time.perf_counter()
scan(sys.argv[1])
print(json.dumps(dict(import_s=imported - t, first_scan_s=time.perf_counter() - imported)))"""


# Runs a command and writes its wall seconds and its own peak RSS to a report file. A process
# of its own: a command started straight from the bench would be charged the bench's peak
# (Python starts children by vfork, and Linux keeps the larger of the old and the new
# memory's peaks at exec); started from this small process, it is charged at most this one's.
_MEASURE = """import json, resource, subprocess, sys, time
t = time.perf_counter()
code = subprocess.run(sys.argv[2:]).returncode
seconds = time.perf_counter() - t
with open(sys.argv[1], "w") as report:
    json.dump(dict(seconds=seconds, peak_rss_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024), report)
sys.exit(code)"""


def _child(command: list[str]) -> tuple[float, float, str]:
    """Run `command` to its end: (wall seconds, its own peak RSS in MB, what it printed)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        run = subprocess.run([sys.executable, "-c", _MEASURE, str(report), *command], capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"{' '.join(command)} exited {run.returncode}: {(run.stderr or run.stdout).strip()[-500:]}")
        measured = json.loads(report.read_text())
    return measured["seconds"], measured["peak_rss_mb"], run.stdout


PROCESS_RUNS = 3  # whole-process rows: the median of this many runs


def _children(commands: dict[str, list[str]]) -> dict[str, list[tuple[float, float, str]]]:
    """PROCESS_RUNS runs of each command, interleaved so a noisy neighbour slows them alike
    (the book was just written and the kernels compiled: nothing to warm up)."""
    runs = {name: [] for name in commands}
    for _ in range(PROCESS_RUNS):
        for name, command in commands.items():
            runs[name].append(_child(command))
    return runs


def _cpu() -> dict:
    """The CPU model and the widest vector unit numba compiles for (LLVM's host features)."""
    from llvmlite import binding
    features = binding.get_host_cpu_features()
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), model)
    except OSError:
        pass
    width = "AVX-512" if features.get("avx512f") else "AVX2" if features.get("avx2") else "other"
    return dict(cpu_model=model or "unknown", llvm_cpu=binding.get_host_cpu_name(), vector_width=width)


def run(positions: int = 1_000_000, seed: int = 0, repeats: int = 9, log=print) -> dict:
    accounts = max(1, positions // 10)
    symbols = 500 if positions >= 1_000_000 else max(20, min(200, positions // 500))
    log(f"generating a book of {positions:,} positions, {accounts:,} accounts, {symbols} symbols ...")
    tables = generate(accounts, positions, symbols, seed)
    book = Book.from_tables(**tables)
    out = ScanArrays.empty(len(book.positions), len(book.wallets))
    rows = len(book.positions)
    results = []

    def record(name, times, rows_done, baselines=None, floor=None, peak_rss_mb=None):
        med = float(np.median(times))
        row = dict(operation=name, median_ms=med * 1e3, p99_ms=float(np.percentile(times, 99)) * 1e3,
                   runs=len(times), rows_per_s=rows_done / med,
                   peak_rss_mb=_peak_rss_mb() if peak_rss_mb is None else peak_rss_mb)
        for base, t in (baselines or {}).items():
            row[f"speedup_vs_{base}"] = t / med
        if floor is not None:
            row["x_floor"] = med / floor
        results.append(row)
        log(f"  {name}: median {med * 1e3:,.2f} ms")

    log("measuring (medians of repeated runs, same process) ...")
    polars_t = float(np.median(_times(lambda: polars_flags(tables), 3)))
    numpy_t = float(np.median(_times(lambda: numpy_flags(book, book.mark), 3)))
    record("baseline: polars pipeline (flags)", [polars_t], rows)
    record("baseline: numpy pipeline (flags)", [numpy_t], rows)
    for name, n_out, kwargs in (("scan: flags + account figures", 0, dict(with_positions=False)),
                                ("scan: all figures (model §4-5)", 8, dict(with_liq_price=False)),
                                ("scan: all figures + liquidation prices", 9, {})):
        floor = float(np.median(_times(bandwidth_floor(book, n_out), repeats)))
        times = _times(lambda: scan_into(book, book.mark, out, **kwargs), repeats)
        record(name, times, rows, dict(polars=polars_t, numpy=numpy_t), floor)
        record(f"  floor: move those bytes once ({n_out} float outputs per position)", [floor], rows)

    engine = Engine(book)
    rng = np.random.default_rng(seed)
    n_sym = len(book.instruments)
    ts = [0]

    def tick(m):
        s = np.sort(rng.choice(n_sym, m, replace=False))
        ts[0] += 1
        engine.on_symbol_marks(s, engine.mark[s] * np.exp(rng.normal(0, 0.001, m)), ts[0])

    touched = np.diff(engine.state.row_start)
    record(f"tick: 1 of {n_sym} symbols (uniform; median {int(np.median(touched)):,} rows)",
           _times(lambda: tick(1), max(repeats, 200), 10.0), float(np.mean(touched)))
    record(f"tick: all {n_sym} symbols", _times(lambda: tick(n_sym), repeats), rows)
    # one run: the crash changes the engine's book (an empty fund, so the bankrupt go to ADL)
    crash = Engine(book, liquidate=True)
    first, cpu, t = crash.next_seq, time.process_time(), time.perf_counter()
    crash.on_symbol_marks(np.arange(n_sym), crash.mark * 0.7, 1)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    kinds = crash.events(first)["kind"].cast(str).value_counts()
    made = dict(zip(kinds["kind"], kinds["count"]))
    record(f"crash tick: every mark -30%, empty fund ({made.get('liquidation_close', 0):,} closes, "
           f"{made.get('adl_close', 0):,} ADL)", [seconds], rows)
    results[-1].update(cpu_s=cpu, closes=made.get("liquidation_close", 0), adl_closes=made.get("adl_close", 0))
    del crash

    requests = generate_requests(tables, max(1, positions // 10), seed)
    record(f"margin requests: {requests.height:,}", _times(lambda: apply_requests(book, requests), 3),
           requests.height)
    # The risk report: every scenario a full engine run with closes on its own copy of the
    # book; one run each (a ladder is minutes where closes are many), after a warm-up scenario.
    from .report import build_report
    from .stress import scenarios, stress
    ladder = scenarios(book)
    one = [s for s in ladder if s.name == "all-10%"]
    stress(book, ladder=ladder[:1])  # warm-up (the base scenario): compiled code loaded, buffers touched
    cpu, t = time.process_time(), time.perf_counter()
    stress(book, ladder=one)
    record("stress: one scenario, all-10% (engine start-up + its closes)", [time.perf_counter() - t], rows)
    results[-1].update(cpu_s=time.process_time() - cpu)
    cpu, t = time.process_time(), time.perf_counter()
    report = build_report(book)
    record(f"report: scan + {report.stress.scenarios.height} scenarios with closes + page",
           [time.perf_counter() - t], rows)
    results[-1].update(cpu_s=time.process_time() - cpu, **{f"{k}_s": v for k, v in report.seconds.items()},
                       closes=int(report.stress.scenarios["positions_closed"].sum()
                                  + report.stress.scenarios["adl_positions"].sum()))
    log(f"    (scan {report.seconds['scan']:.1f} s, scenarios {report.seconds['stress']:.1f} s, page "
        f"{report.seconds['page']:.1f} s; {results[-1]['closes']:,} closes)")
    with tempfile.TemporaryDirectory() as tmp:
        write_tables(tables, Path(tmp) / "book")
        tables["marks"].write_parquet(Path(tmp) / "marks.parquet")
        record("Parquet load + validation (load_book)", _times(lambda: load_book(Path(tmp) / "book"), 3), rows)
        k = [0]

        def settle_once():
            k[0] += 1
            settle(Path(tmp) / "book", Path(tmp) / f"out{k[0]}", marks=Path(tmp) / "marks.parquet",
                   settlement_id=f"b{k[0]}")
        record("settlement, Parquet in and out", _times(settle_once, 3), rows)
        snapshot = Path(tmp) / "snapshot"  # the engine stops ticking while it writes one: its stall
        record("engine snapshot (exact pass + the state to Parquet)", _times(lambda: engine.snapshot(snapshot), 3),
               rows)
        record("engine restore (checksums, load, state rebuilt)", _times(lambda: Engine.restore(snapshot), 3), rows)

        log(f"whole processes on the book on disk (medians of {PROCESS_RUNS}, interleaved) ...")
        book_dir = Path(tmp) / "book"
        scan_cmd = [sys.executable, "-m", "riskcore", "scan", str(book_dir)]
        runs = _children({
            "riskcore": scan_cmd + ["--out", str(Path(tmp) / "scan")],
            "riskcore, script's figures": scan_cmd + ["--no-liq-price", "--out", str(Path(tmp) / "scan-figures")],
            "polars script": [sys.executable, str(BASELINE_SCRIPT), str(book_dir), str(Path(tmp) / "polars")]})
        script_s = float(np.median([seconds for seconds, _, _ in runs["polars script"]]))
        for name, key in (("whole process: riskcore scan BOOK --out DIR", "riskcore"),
                          ("whole process: riskcore scan --no-liq-price --out DIR", "riskcore, script's figures"),
                          ("whole process: polars script (no liquidation prices)", "polars script")):
            seconds, rss = [r[0] for r in runs[key]], [r[1] for r in runs[key]]
            record(name, seconds, rows, None if key == "polars script" else dict(polars=script_s),
                   peak_rss_mb=float(np.median(rss)))

        tiny = Path(tmp) / "tiny"
        write_tables(generate(100, 1_000, 20, seed), tiny)
        runs = _children({"program": [sys.executable, "-m", "riskcore", "scan", str(tiny), "--out", str(tiny) + "-out"],
                          "split": [sys.executable, "-c", _STARTUP, str(tiny)]})
        split = [json.loads(text.strip().splitlines()[-1]) for _, _, text in runs["split"]]
        import_ms, first_ms = (float(np.median([s[k] for s in split])) * 1e3 for k in ("import_s", "first_scan_s"))
        record(f"start-up, scan of 1k rows (import {import_ms:.0f} + first scan {first_ms:.0f} ms)",
               [r[0] for r in runs["program"]], 1_000, peak_rss_mb=float(np.median([r[1] for r in runs["program"]])))
        results[-1].update(import_ms=import_ms, first_scan_ms=first_ms)
    return dict(machine=dict(platform=platform.platform(), python=sys.version.split()[0], cpus=os.cpu_count(),
                             numba_threads=numba.get_num_threads(), numba=numba.__version__, **_cpu()),
                book=dict(positions=rows, wallets=len(book.wallets), accounts=accounts, symbols=n_sym),
                results=results)


def table(report: dict) -> str:
    m, b = report["machine"], report["book"]
    lines = [f"riskcore bench: {b['positions']:,} positions, {b['wallets']:,} wallets, {b['symbols']} symbols; "
             f"{m['cpus']} CPUs ({m['cpu_model']}, {m['llvm_cpu']}, {m['vector_width']}), "
             f"{m['numba_threads']} numba threads, {m['platform']}",
             f"{'operation':<58} {'median':>11} {'p99':>11} {'rows/s':>10} {'vs polars':>9} {'vs numpy':>9} "
             f"{'x floor':>8} {'peak RSS':>9}"]
    for r in report["results"]:
        def ratio(key, fmt="{:.1f}x"):
            return fmt.format(r[key]) if key in r else ""
        lines.append(f"{r['operation']:<58} {r['median_ms']:>9,.2f}ms {r['p99_ms']:>9,.2f}ms "
                     f"{r['rows_per_s'] / 1e6:>8,.1f}M/s {ratio('speedup_vs_polars'):>9} {ratio('speedup_vs_numpy'):>9} "
                     f"{ratio('x_floor'):>8} {r['peak_rss_mb']:>7,.0f}MB")
    lines.append("vs polars/numpy: how many times faster than that baseline computing the same flags (whole-process "
                 "rows: than the polars script, whole process); x floor: how many times the time to move the "
                 "operation's bytes once; peak RSS: the bench process's high-water mark so far (whole-process rows: "
                 "that process's own peak)")
    return "\n".join(lines)


def write_json(report: dict, path) -> None:
    Path(path).write_text(json.dumps(report, indent=2))
