"""The engine survives a crash (docs/model.md §8.7): a restored snapshot goes on exactly as
the engine it was taken of; a damaged snapshot is detected and the one before used; a
`replay --state` killed at random moments and resumed ends table-equal to a run never
killed."""

import json
import os
import random
import signal
import subprocess
import sys
from unittest import mock

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

import riskcore as rc
from riskcore.cli import main
from riskcore.engine import Engine
from riskcore.engine.durable import ReplayState, SnapshotError
from riskcore.io import book_tables

from books import tick_paths

def play(engine, path, start):
    for ts, (chosen, moves) in enumerate(path[start:], start):
        idx = [engine.book.instruments.symbol.index(s) for s in chosen]
        engine.on_marks(chosen, engine.mark[idx] * np.array(moves), ts=np.int64(ts))


def assert_same_engine(a, b):
    for name, table in book_tables(a.current_book()).items():
        assert table.equals(book_tables(b.current_book())[name]), name
    assert a.insurance_fund().equals(b.insurance_fund())
    np.testing.assert_array_equal(a.order_cancelled, b.order_cancelled)
    for name in a.out.accounts:
        np.testing.assert_array_equal(a.out.accounts[name], b.out.accounts[name], err_msg=name)
    fa, fb = a.position_figures(), b.position_figures()
    for name in fa:
        np.testing.assert_array_equal(fa[name], fb[name], err_msg=name)
    assert (a.ticks, a.ts, a.next_seq) == (b.ticks, b.ts, b.next_seq)


# enough symbols that a one-symbol tick is incremental (running sums, not a full scan)
@given(case=tick_paths(max_symbols=6, most_moved=2, ticks=(2, 10)), at=st.integers(0, 10), liquidate=st.booleans())
def test_a_restored_engine_goes_on_exactly_as_the_original(case, at, liquidate, tmp_path_factory):
    """Ticks run incrementally (no full scans but the snapshot's), so the original's running
    sums have drifted by rounding when it is snapshotted: the restore must still match."""
    tables, path, fund = case
    at = min(at, len(path))
    with mock.patch("riskcore.engine.core.FULL_SCAN_SHARE", 1.0):
        _snapshot_midway(tables, path, at, fund, liquidate, tmp_path_factory)


def _snapshot_midway(tables, path, at, fund, liquidate, tmp_path_factory):
    book = rc.Book.from_tables(**tables)
    fund_table = pl.DataFrame({"asset": book.assets, "balance": [fund] * len(book.assets)})
    original = Engine(book, liquidate=liquidate, insurance_fund=fund_table)
    play(original, path[:at], 0)
    folder = tmp_path_factory.mktemp("snap") / "s"
    original.snapshot(folder)
    restored = Engine.restore(folder)
    assert_same_engine(original, restored)
    seq = original.next_seq
    play(original, path, at)
    play(restored, path, at)
    assert_same_engine(original, restored)
    assert original.events(since_seq=seq).equals(restored.events())
    assert restored.events()["seq"].to_list() == list(range(seq, restored.next_seq))


def test_events_are_numbered_over_the_whole_history(tmp_path):
    from riskcore.gen import generate
    engine = Engine(rc.Book.from_tables(**generate(300, 1200, 8, seed=4)), liquidate=True)
    engine.on_marks(engine.book.instruments.symbol, engine.mark * 0.7, ts=1)
    events = engine.events()
    assert events.height and events["seq"].to_list() == list(range(events.height))
    assert engine.events(since_seq=5)["seq"].to_list() == list(range(5, events.height))


def _snapshot(tmp_path):
    from riskcore.gen import generate
    engine = Engine(rc.Book.from_tables(**generate(200, 800, 6, seed=1)), liquidate=True)
    engine.on_marks(engine.book.instruments.symbol, engine.mark * 0.8, ts=1)
    engine.snapshot(tmp_path / "s")
    return tmp_path / "s"


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "remove a file", "remove the checksums",
                                    "half written"])
def test_a_damaged_snapshot_is_refused_naming_it(tmp_path, damage):
    folder = _snapshot(tmp_path)
    target = folder / "book" / "positions.parquet"
    if damage == "flip a byte":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "remove a file":
        target.unlink()
    elif damage == "remove the checksums":
        (folder / "snapshot.json").unlink()
    else:  # a copy stopped midway: what a kill during the copy leaves
        for f in ("insurance_fund.parquet", "engine.parquet", "snapshot.json"):
            (folder / f).unlink()
    with pytest.raises(SnapshotError, match=str(folder)):
        Engine.restore(folder)


def test_a_resume_falls_back_to_the_snapshot_before_a_damaged_one(tmp_path, capsys):
    book, ticks = _book_with_ticks(tmp_path, ticks=60)
    state = tmp_path / "state"
    run = ["replay", book, ticks, "--liquidate", "--state", state, "--snapshot-every", "20"]
    assert main([str(a) for a in run + ["--out", tmp_path / "whole"]]) == 0
    newest = sorted((state / "snapshots").glob("tick-*"))[-1]
    (newest / "engine.parquet").write_bytes(b"damaged")
    assert main([str(a) for a in run + ["--out", tmp_path / "again", "--resume"]]) == 0
    for name in ("events.parquet", "insurance_fund.parquet", "book/positions.parquet", "book/accounts.parquet"):
        assert pl.read_parquet(tmp_path / "again" / name).equals(pl.read_parquet(tmp_path / "whole" / name)), name


def test_resume_refuses_other_inputs_a_state_in_use_and_start_a_used_state(tmp_path, capsys):
    book, ticks = _book_with_ticks(tmp_path, ticks=10)
    other = tmp_path / "other.parquet"
    pl.read_parquet(ticks).head(5).write_parquet(other)
    state = tmp_path / "state"
    assert main(["replay", str(book), str(ticks), "--out", str(tmp_path / "o"), "--state", str(state)]) == 0
    capsys.readouterr()
    running = ReplayState(state)  # another replay holding the state right now
    running._lock()
    assert main([str(a) for a in ["replay", book, ticks, "--state", state, "--resume", "--out", tmp_path / "o2"]]) == 2
    assert "is in use by another replay right now" in capsys.readouterr().err
    running.close()
    cases = [(["replay", book, other, "--state", state, "--resume"], "another tick file"),
             (["replay", book, ticks, "--state", state, "--resume", "--liquidate"], "another liquidate"),
             (["replay", book, ticks, "--state", state], "already holds a replay's state"),
             (["replay", book, ticks, "--state", tmp_path / "new", "--resume"], "holds no replay state"),
             (["replay", book, ticks, "--resume"], "need --state")]
    for argv, words in cases:
        assert main([str(a) for a in argv + ["--out", tmp_path / "o2"]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err


def _book_with_ticks(tmp_path, ticks: int, accounts: int = 400, positions: int = 1600):
    """A book and a stream with jumps 100× as often as a real market's, so that it crashes:
    forced closes and, with an empty fund, ADL."""
    from riskcore.gen import generate, generate_ticks
    from riskcore.io import write_tables
    tables = generate(accounts, positions, 8, seed=3)
    book = tmp_path / "book"
    write_tables(tables, book)
    generate_ticks(tables, ticks, seed=3, jump_rate_factor=100.0).write_parquet(tmp_path / "ticks.parquet")
    return book, tmp_path / "ticks.parquet"


@pytest.mark.slow
def test_replay_killed_at_random_moments_and_resumed_equals_a_run_never_killed(tmp_path):
    """Dozens of SIGKILLs across a replay with forced closes, an empty fund and ADL; each time
    resumed; the outputs equal an uninterrupted run's, sequence numbers included."""
    book, ticks = _book_with_ticks(tmp_path, ticks=12000, accounts=1000, positions=4000)
    replay = [sys.executable, "-m", "riskcore", "replay", str(book), str(ticks), "--liquidate",
              "--snapshot-every", "50"]
    subprocess.run(replay + ["--state", str(tmp_path / "s0"), "--out", str(tmp_path / "whole")], check=True,
                   capture_output=True)
    rng, kills, resume = random.Random(7), 0, []
    state, out = tmp_path / "s1", tmp_path / "killed"
    while True:
        child = subprocess.Popen(replay + ["--state", str(state), "--out", str(out)] + resume,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:  # after 60 kills it is left to finish (a slow machine must still end)
            child.wait(timeout=rng.uniform(0.2, 1.4) if kills < 60 else None)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
            child.wait()
            kills += 1
            resume = ["--resume"] if (state / "run.json").exists() else []  # else killed before it began
            continue
        assert child.returncode == 0, child.stderr.read().decode()
        break
    assert kills >= 24
    events = pl.read_parquet(out / "events.parquet")
    assert events.equals(pl.read_parquet(tmp_path / "whole" / "events.parquet"))
    assert events["seq"].to_list() == list(range(events.height))
    assert set(events["kind"].cast(pl.String)) >= {"liquidation_close", "adl_close"}
    for name in ("insurance_fund.parquet", "book/positions.parquet", "book/accounts.parquet", "book/orders.parquet"):
        assert pl.read_parquet(out / name).equals(pl.read_parquet(tmp_path / "whole" / name)), name
    assert json.loads((state / "run.json").read_text())["snapshot_every"] == 50
    assert not os.path.exists(state / "events" / ".tmp")
