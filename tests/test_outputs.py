"""What commands do to the folders they are given, as users and adversaries hit it: an --out
that is (or holds, or lies in) the input, a file, a link, someone else's folder; chains of
commands that must not apply a settlement twice; two runs at once; kill -9 at any moment."""

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import riskcore as rc
from riskcore.cli import main
from riskcore.engine import Engine
from riskcore.gen import generate, generate_requests, generate_ticks
from riskcore.io import book_tables, write_tables
from riskcore.output import MANIFEST, is_riskcore_output

ENV = dict(os.environ, PYTHONPATH=str(Path(rc.__file__).parent.parent))


@pytest.fixture(scope="module")
def desk(tmp_path_factory):
    """desk/book (with ticks), desk/requests.parquet, desk/marks-a.parquet, desk/marks-b.parquet."""
    desk = tmp_path_factory.mktemp("desk")
    tables = generate(300, 3000, 20, seed=3)
    write_tables(tables, desk / "book")
    generate_ticks(tables, 40, seed=3).write_parquet(desk / "ticks-a.parquet")
    generate_ticks(tables, 40, seed=4).write_parquet(desk / "ticks-b.parquet")
    generate_requests(tables, 300, seed=3).write_parquet(desk / "requests-a.parquet")
    generate_requests(tables, 300, seed=4).write_parquet(desk / "requests-b.parquet")
    marks = tables["marks"].with_columns(pl.lit(0.0001).alias("funding_rate"))
    marks.write_parquet(desk / "marks-a.parquet")
    marks.with_columns(pl.col("mark_price") * 0.97).write_parquet(desk / "marks-b.parquet")
    return desk


def commands(desk: Path, out: Path, variant: str = "a") -> dict[str, list[str]]:
    """Every command that writes an --out, reading desk/book."""
    b = str(desk / "book")
    return {
        "gen": ["gen", "--accounts", "100", "--positions", "500", "--symbols", "5", "--seed", variant == "a" and "1" or "2",
                str(out)],
        "scan": ["scan", b, "--marks", str(desk / f"marks-{variant}.parquet"), "--out", str(out)],
        "apply": ["apply", b, str(desk / f"requests-{variant}.parquet"), "--out", str(out)],
        "replay": ["replay", b, str(desk / f"ticks-{variant}.parquet"), "--out", str(out), "--liquidate"],
        "settle": ["settle", b, "--marks", str(desk / f"marks-{variant}.parquet"), "--id", "day-1", "--out", str(out)],
    }


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("riskcore: error: ")
    return err[0]


READERS = ["scan", "apply", "replay", "settle"]


@pytest.mark.parametrize("command", READERS)
def test_out_that_is_holds_or_lies_in_the_input_is_refused_and_nothing_changes(desk, command, capsys):
    before = snapshot(desk)
    for out, says in ((desk / "book", "is the input"), (desk, "holds the input"),
                      (desk / "book" / "positions", "lies inside the input")):
        for force in ([], ["--force"]):  # --force never touches an input
            assert main(commands(desk, out)[command] + force) == 2
            assert says in one_error_line(capsys)
    assert snapshot(desk) == before
    assert not [p for p in desk.parent.iterdir() if ".riskcore-" in p.name]


@pytest.mark.parametrize("command", READERS + ["gen"])
def test_out_that_is_a_file_a_link_or_a_foreign_folder_is_refused(desk, command, tmp_path, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    link = tmp_path / "link"
    link.symlink_to(foreign)
    for out, says in ((file, "is a file"), (link, "symbolic link"), (foreign, "riskcore did not write")):
        assert main(commands(desk, out)[command]) == 2
        line = one_error_line(capsys)
        assert str(out) in line and says in line
    assert file.read_text() == "mine" and link.is_symlink() and snapshot(foreign) == {"cat.jpg": b"\xff\xd8"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "notes.txt", "photos"]  # no hidden leftovers
    # --force replaces a foreign folder, whole
    assert main(commands(desk, foreign)[command] + ["--force"]) == 0
    assert "cat.jpg" not in snapshot(foreign) and is_riskcore_output(foreign)["command"] == command


def test_out_that_is_the_current_folder_is_refused(desk, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["scan", str(desk / "book"), "--out", "."]) == 2
    assert "current folder" in one_error_line(capsys)
    assert not list(tmp_path.iterdir())


def test_new_empty_and_own_folders_are_written_and_replaced_whole(desk, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(commands(desk, empty)["scan"]) == 0
    manifest = is_riskcore_output(empty)
    assert manifest["command"] == "scan" and set(manifest["files"]) == {"positions.parquet", "accounts.parquet"}
    assert {k: len(v) for k, v in snapshot(empty).items() if k != MANIFEST} == manifest["files"]
    first = pl.read_parquet(empty / "accounts.parquet")
    assert main(commands(desk, empty, "b")["scan"]) == 0  # the same command replaces its own output
    assert not pl.read_parquet(empty / "accounts.parquet").equals(first)
    # another command's output is not replaced without --force
    assert main(commands(desk, empty)["apply"]) == 2
    assert "holds the output of 'riskcore scan'" in one_error_line(capsys)
    assert main(commands(desk, empty)["apply"] + ["--force"]) == 0
    assert (empty / "outcomes.parquet").exists() and is_riskcore_output(empty)["command"] == "apply"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_api_settle_refuses_its_input_as_output(desk):
    with pytest.raises(rc.BookError, match="is the input"):
        rc_settle(desk / "book", desk / "book", marks=desk / "marks-a.parquet", settlement_id="x")


def rc_settle(*args, **kwargs):
    from riskcore.settle import settle
    return settle(*args, **kwargs)


# -- chains of commands ------------------------------------------------------------------
def test_a_settlement_is_never_applied_twice_through_a_chain(desk, tmp_path, capsys):
    marks = str(desk / "marks-a.parquet")
    assert main(["settle", str(desk / "book"), "--marks", marks, "--id", "d1", "--out", str(tmp_path / "s1")]) == 0
    assert main(["apply", str(tmp_path / "s1"), str(desk / "requests-a.parquet"), "--out", str(tmp_path / "a1")]) == 0
    assert main(["replay", str(tmp_path / "a1"), str(desk / "ticks-a.parquet"), "--out", str(tmp_path / "r1"),
                 "--liquidate"]) == 0
    capsys.readouterr()
    for book in (tmp_path / "a1", tmp_path / "r1" / "book"):
        assert rc.load_book(book).settlements["settlement_id"].to_list() == ["d1"]
        assert main(["settle", str(book), "--marks", marks, "--id", "d1", "--out", str(tmp_path / "again")]) == 2
        assert "settlement d1 was already applied" in one_error_line(capsys)
    assert main(["settle", str(tmp_path / "r1" / "book"), "--marks", marks, "--id", "d2",
                 "--out", str(tmp_path / "s2")]) == 0
    assert rc.load_book(tmp_path / "s2").settlements["settlement_id"].to_list() == ["d1", "d2"]


def test_replay_book_is_the_engine_state_and_rescans_to_its_figures(tmp_path):
    tables = generate(400, 4000, 10, seed=11)
    book = rc.Book.from_tables(**tables)
    assert len(book.orders)
    fund = pl.DataFrame({"asset": book.assets, "balance": [1e6] * len(book.assets)})
    engine = Engine(book, liquidate=True, insurance_fund=fund)
    for k, factor in enumerate((0.97, 0.93, 0.9)):
        engine.on_symbol_marks(np.arange(len(book.instruments)), book.mark * factor, k + 1)
    assert engine.order_cancelled.any(), "the crash should have cancelled some orders"
    write_tables(book_tables(engine.current_book()), tmp_path / "book")
    again = rc.load_book(tmp_path / "book")
    assert len(again.orders) == int((~engine.order_cancelled).sum())
    np.testing.assert_array_equal(again.mark, engine.mark)
    figures = rc.scan(again, liq_prices=False).accounts
    mine = engine.out.accounts
    np.testing.assert_array_equal(figures["liquidate"].to_numpy(), mine["liquidate"])
    np.testing.assert_allclose(again.wallets.order_margin, engine.book.wallets.order_margin, rtol=1e-12)
    for name in ("equity", "cross_mm", "available_balance"):
        np.testing.assert_allclose(figures[name].to_numpy(), mine[name], rtol=1e-9, atol=1e-6)
    positions = rc.scan(again, liq_prices=False).positions
    for name, values in engine.position_figures().items():
        np.testing.assert_allclose(positions[name].to_numpy().astype(float), values.astype(float), rtol=1e-9,
                                   atol=1e-9)


# -- processes: two at once, kill -9 -------------------------------------------------------
def run(argv, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "riskcore", *argv], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kw)


def tables_of(folder: Path) -> dict[str, pl.DataFrame]:
    """Every Parquet file of an output, by path (settle's applied_at time left out)."""
    return {str(p.relative_to(folder)): pl.read_parquet(p).drop("applied_at", strict=False)
            for p in sorted(folder.rglob("*.parquet"))}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].equals(b[k]) for k in a)


def assert_whole(out: Path, expected: list[dict]) -> None:
    """OUT is a complete output (its manifest lists exactly its files) equal to one of `expected`."""
    manifest = is_riskcore_output(out)
    assert manifest is not None, f"{out} has no manifest: a partial output"
    on_disk = {k: len(v) for k, v in snapshot(out).items() if k != MANIFEST}
    assert on_disk == manifest["files"]
    assert any(same(tables_of(out), e) for e in expected), "OUT mixes two outputs"


@pytest.mark.parametrize("command", ["scan", "apply", "replay"])
def test_two_runs_into_one_out_both_succeed_and_leave_one_whole_output(desk, command, tmp_path):
    expected = []
    for v in "ab":
        assert main(commands(desk, tmp_path / f"ref-{v}", v)[command]) == 0
        expected.append(tables_of(tmp_path / f"ref-{v}"))
    out = tmp_path / "shared"
    for _ in range(2):
        procs = [run(commands(desk, out, v)[command]) for v in "ab"]
        for p in procs:
            assert p.wait() == 0, p.stderr.read()
        assert_whole(out, expected)
    assert not [p for p in tmp_path.iterdir() if ".riskcore-" in p.name]


KILLED_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
import riskcore.output as output
from riskcore.cli import main
output._exchange = lambda a, b: False  # a system without an atomic exchange: the two-rename fallback
rename = Path.rename
def dying_rename(self, target):
    result = rename(self, target)
    if str(target).endswith(".old"):  # the old output is moved aside, the new one not yet in
        os.kill(os.getpid(), signal.SIGKILL)
    return result
Path.rename = dying_rename
sys.exit(main(sys.argv[1:]))
"""


def test_fallback_publish_killed_between_its_renames_is_repaired_by_the_next_run(desk, tmp_path):
    out = tmp_path / "out"
    assert main(commands(desk, out)["scan"]) == 0
    first = tables_of(out)
    p = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_RENAMES, *commands(desk, out, "b")["scan"]], env=ENV)
    assert p.returncode == -9 and not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".old")]
    assert main(commands(desk, out, "b")["scan"]) == 0  # restores the previous output, then replaces it
    assert not same(tables_of(out), first) and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_fallback_publish_replaces_whole(desk, tmp_path, monkeypatch):
    import riskcore.output as output
    monkeypatch.setattr(output, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    for v in "abab":
        assert main(commands(desk, out, v)["scan"]) == 0
        assert is_riskcore_output(out) and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def kill_loop(desk: Path, tmp_path: Path, kills: int, seed: int) -> None:
    """Run commands into one OUT per command, SIGKILL each at a random moment, and check that
    OUT is always a whole earlier output; finally one run to the end and no leftovers."""
    rng = random.Random(seed)
    outs, expected, durations = {}, {}, {}
    for command in ("scan", "apply", "replay", "settle", "gen"):
        t = time.perf_counter()
        p = run(commands(desk, tmp_path / f"ref-{command}-a")[command])
        assert p.wait() == 0, p.stderr.read()
        durations[command] = time.perf_counter() - t
        assert main(commands(desk, tmp_path / f"ref-{command}-b", "b")[command]) == 0
        refs = [tables_of(tmp_path / f"ref-{command}-{v}") for v in "ab"]
        expected[command], outs[command] = refs, tmp_path / f"out-{command}"
    for k in range(kills):
        command = rng.choice(sorted(outs))
        p = run(commands(desk, outs[command], rng.choice("ab"))[command])
        time.sleep(rng.uniform(0, durations[command] * 1.2))
        p.kill()
        p.wait()
        if outs[command].exists():
            assert_whole(outs[command], expected[command])
    for command, out in outs.items():
        p = run(commands(desk, out)[command])
        assert p.wait() == 0, p.stderr.read()
        assert_whole(out, expected[command][:1])
    assert not [p.name for p in tmp_path.iterdir() if ".riskcore-" in p.name]
    assert rc.load_book(desk / "book")  # the input is whole


def test_kill_9_at_random_moments_leaves_a_whole_output(desk, tmp_path):
    kill_loop(desk, tmp_path, kills=8, seed=1)


@pytest.mark.slow
def test_kill_9_at_random_moments_many_times(desk, tmp_path):
    kill_loop(desk, tmp_path, kills=60, seed=2)


def test_files_a_user_added_to_an_output_are_not_deleted_silently(desk, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(commands(desk, out)["scan"]) == 0
    (out / "notes.txt").write_text("mine")
    (out / "mywork").mkdir()
    assert main(commands(desk, out)["scan"]) == 2
    assert "holds files riskcore did not write (mywork, notes.txt)" in one_error_line(capsys)
    assert (out / "notes.txt").read_text() == "mine"
    assert main(commands(desk, out)["scan"] + ["--force"]) == 0
    assert not (out / "notes.txt").exists()


@pytest.mark.parametrize("name", ["o[1]", "st*r", "q?"])
def test_dead_leftovers_are_cleaned_whatever_the_name_and_only_their_own(desk, tmp_path, name):
    def leftover(of):
        stage = tmp_path / f".{of}.riskcore-999999-dead"
        (stage / "positions.parquet").parent.mkdir(parents=True)
        (stage / "positions.parquet").write_bytes(b"partial")
        Path(f"{stage}.lock").touch()  # nobody holds its lock: its run is dead
        return stage
    mine, other = leftover(name), leftover("star")
    assert main(commands(desk, tmp_path / name)["scan"]) == 0
    assert not mine.exists() and not Path(f"{mine}.lock").exists()
    assert other.exists() and Path(f"{other}.lock").exists()  # another OUT's leftover is not ours to clean


RACER = """
import sys
from pathlib import Path
from riskcore.output import output_dir
for k in range(int(sys.argv[2])):
    with output_dir(sys.argv[1], command="race") as stage:
        (Path(stage) / "n.txt").write_text(str(k))
"""


def test_many_runs_racing_for_one_out_all_succeed(tmp_path):
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(out), "60"], env=ENV, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    for p in procs:
        assert p.wait() == 0, p.stderr.read()
    assert is_riskcore_output(out)["files"] == {"n.txt": len((out / "n.txt").read_text())}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
