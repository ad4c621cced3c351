"""The engine survives a crash (docs/model.md §8.7): snapshots, the events journal, and the
replay state that `riskcore replay --state` resumes from.

A snapshot is a folder published whole (output.output_dir: staged, fsynced, swapped in by
one rename), in open formats:
- book/: the book as the engine holds it, itself a loadable book folder (positions after
  forced closes, cancelled orders gone, the engine's marks as its marks table);
- insurance_fund.parquet: the fund per asset, exact decimals;
- engine.parquet: one row: ticks applied, the last tick's ts, the next event number, the
  money scales, the settings, and what a replay records beside it (JSON);
- order_origin.parquet: each remaining order's index in the book as loaded;
- snapshot.json: every other file's size and CRC-32, checked before anything is restored.

Only primary state is kept. Figures, running sums, flags and everything else the engine
derives are recomputed at restore from the book and the marks; the snapshot is taken right
after an exact pass, so that recomputation gives the snapshotted engine's state bit for bit
and the restored engine goes on exactly as the original does.
"""

import fcntl
import hashlib
import json
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import BookError
from ..io import book_tables, load_book, reading, write_parquet, write_tables, writing
from ..output import output_dir

SNAPSHOT_FORMAT = 1
CHECKSUMS = "snapshot.json"
SNAPSHOT_EVERY = 1_000  # ticks between a replay's snapshots unless told (--snapshot-every)
JOURNAL_EVERY = 100     # ticks between journal flushes: how far behind a reader following the events is


class SnapshotError(BookError):
    """A snapshot that cannot be used (missing, damaged, another format): names it and why."""

    def __init__(self, folder, problem: str):
        super().__init__(str(folder), None, problem)


@dataclass
class Resume:
    """What an Engine carries besides its book, marks and fund (see Engine.__init__)."""
    ticks: int
    ts: object
    next_seq: int
    n_orders: int
    order_origin: np.ndarray


def write_snapshot(engine, folder, replay: dict | None = None) -> None:
    """The engine's primary state into `folder` (Engine.snapshot makes the exact pass first)."""
    book = engine.current_book()
    with output_dir(folder, command="snapshot") as stage:
        write_tables(book_tables(book), stage / "book")
        write_parquet(engine.insurance_fund(), stage / "insurance_fund.parquet")
        write_parquet(pl.DataFrame({"order_at_load": engine._order_origin}), stage / "order_origin.parquet")
        meta = pa.table({
            "format": [SNAPSHOT_FORMAT], "ticks": [engine.ticks], "ts": pa.array([engine.ts]),
            "next_seq": [engine.next_seq], "orders_at_load": [engine._n_orders],
            "liquidate": [engine.execute], "resync_every": [engine.resync_every],
            "money_scale": [json.dumps(dict(zip(book.assets, book.asset_scale.tolist())))],
            "replay": [json.dumps(replay)]})
        with writing(stage / "engine.parquet"):
            pq.write_table(meta, stage / "engine.parquet")
        files = sorted(p for p in stage.rglob("*") if p.is_file() and not p.name.startswith("."))
        sums = {str(p.relative_to(stage)): dict(size=p.stat().st_size, crc32=_crc32(p)) for p in files}
        (stage / CHECKSUMS).write_text(json.dumps(dict(format=SNAPSHOT_FORMAT, files=sums), indent=1))


def read_snapshot(folder):
    """(the Engine a snapshot holds, what its replay recorded), after checking every file
    against its checksum (SnapshotError naming the first that fails)."""
    from .core import Engine  # core imports this module
    folder = Path(folder)
    check_snapshot(folder)
    table = pq.read_table(folder / "engine.parquet")
    meta = table.drop_columns(["ts"]).to_pylist()[0]
    ts = table.column("ts").to_numpy(zero_copy_only=False)[0]  # numpy's, as a tick file's ts are (None: none yet)
    origin = pl.read_parquet(folder / "order_origin.parquet")["order_at_load"].to_numpy().astype(np.int64)
    book = load_book(folder / "book", money_scale=json.loads(meta["money_scale"]))
    resume = Resume(meta["ticks"], ts, meta["next_seq"], meta["orders_at_load"], origin)
    engine = Engine(book, liquidate=meta["liquidate"], insurance_fund=folder / "insurance_fund.parquet",
                    resync_every=meta["resync_every"], _resume=resume)
    return engine, json.loads(meta["replay"])


def check_snapshot(folder: Path) -> None:
    """Every file the snapshot lists is there with its size and CRC-32 (SnapshotError if not)."""
    try:
        listed = json.loads((folder / CHECKSUMS).read_text())
    except (OSError, ValueError):
        raise SnapshotError(folder, f"is not a whole snapshot ({CHECKSUMS} missing or unreadable)") from None
    if listed.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(folder, f"is a snapshot of format {listed.get('format')}, this riskcore reads "
                                    f"{SNAPSHOT_FORMAT}")
    for name, want in listed["files"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != want["size"] or _crc32(path) != want["crc32"]:
            raise SnapshotError(folder, f"is damaged: {name} is missing or differs from when it was written")


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def digest(path) -> str | None:
    """SHA-256 of a file, or of a folder's files (names and contents); None for no path. What
    a resumed replay checks its inputs against."""
    if path is None:
        return None
    path = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0")
        with reading(f), open(f, "rb") as data:
            while chunk := data.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


# -- the replay's state folder ------------------------------------------------------------------

class ReplayState:
    """`riskcore replay --state STATE`: the run's identity (run.json: its inputs' digests and
    settings), its snapshots (snapshots/tick-N, the newest two kept) and its events journal
    (events/seq-N.parquet: every event numbered N and on, up to the next part; each part
    written whole and fsynced, never changed). A kill at any moment leaves a state that
    `resume` continues from: the newest whole snapshot, the journal cut back to it (the
    events after it come again, identical)."""

    KEEP = 2

    def __init__(self, folder: Path, every: int = SNAPSHOT_EVERY):
        self.folder = Path(folder)
        self.every = every  # ticks between snapshots
        self.snapshots = self.folder / "snapshots"
        self.journal = self.folder / "events"
        self.flushed = 0  # the next event number not yet in the journal

    LEFTOVERS = {".run.json.tmp", ".lock", "events", "snapshots"}  # what a start killed before run.json leaves

    @classmethod
    def start(cls, folder, identity: dict) -> "ReplayState":
        """A new run's state in `folder`: new or empty (or what a start killed before its
        run.json leaves); a folder holding a run, or anything else, is refused."""
        state = cls(folder, identity["snapshot_every"])
        held = {p.name for p in state.folder.iterdir()} if state.folder.is_dir() else set()
        if "run.json" in held:
            raise BookError(str(state.folder), None, "already holds a replay's state: resume it with --resume, "
                                                     "or name a new folder")
        if held - cls.LEFTOVERS:
            raise BookError(str(state.folder), None, "is a non-empty folder that holds no replay state; name a new "
                                                     "or empty folder")
        with writing(state.folder):
            state.folder.mkdir(parents=True, exist_ok=True)
            state._lock()
            _write_whole(state.folder / "run.json", json.dumps(identity, indent=1).encode())
            state._folders()
        return state

    def _lock(self) -> None:
        """Hold the state's lock for this process's life: one run at a time (the kernel drops
        a killed run's lock, so a resume never waits for the dead)."""
        self._lock_fd = os.open(self.folder / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BookError(str(self.folder), None, "is in use by another replay right now") from None

    def close(self) -> None:
        """Let the state go (the lock; a killed run's goes with its process)."""
        os.close(self._lock_fd)

    def _folders(self) -> None:
        """The journal and snapshot folders, without what killed runs left half written."""
        for folder in (self.journal, self.snapshots):
            folder.mkdir(exist_ok=True)
            for leftover in folder.glob(".*"):  # staging copies, temp parts: the lock says no run owns them
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)

    @classmethod
    def resume(cls, folder, identity: dict):
        """(the state, the engine of its newest whole snapshot, what the replay recorded);
        the engine is None when no snapshot is whole (a kill before the first was published):
        the run then starts again from its inputs, which are the same ones."""
        state = cls(folder, identity["snapshot_every"])
        try:
            started = json.loads((state.folder / "run.json").read_text())
        except (OSError, ValueError):
            raise BookError(str(state.folder), None, "holds no replay state to resume") from None
        for key, value in identity.items():
            if started.get(key) != value:
                raise BookError(str(state.folder), None, f"was started with another {key.replace('_', ' ')} "
                                                         f"({str(started.get(key))[:16]} ≠ {str(value)[:16]}); resume "
                                                         "with the same inputs and options, or start a new --state "
                                                         "folder")
        state._lock()
        state._folders()
        engine, replay = None, dict(next_tick=0)
        for snap in sorted(state.snapshots.glob("tick-*"), reverse=True):
            try:
                engine, replay = read_snapshot(snap)
                break
            except SnapshotError:
                continue  # damaged or half written: the one before
        state.flushed = 0 if engine is None else engine.next_seq
        for part in state.journal.glob("seq-*.parquet"):  # those events come again, identical
            if _seq_of(part) >= state.flushed:
                part.unlink()
        return state, engine, replay

    def flush(self, engine) -> None:
        """Append the events since the last flush to the journal, as one part."""
        if engine.next_seq == self.flushed:
            return
        part = engine.events(since_seq=self.flushed)
        path = self.journal / f"seq-{self.flushed:015d}.parquet"
        tmp = path.with_name(f".{path.name}.tmp")
        write_parquet(part, tmp)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(self.journal)
        self.flushed = engine.next_seq

    def snapshot(self, engine, replay: dict) -> None:
        """Journal, then a snapshot named by where the replay stands (replay["next_tick"]);
        older ones beyond the newest KEEP removed (a damaged newest falls back to the one
        before)."""
        engine._exact_pass()  # as Engine.snapshot does; its events belong before the snapshot's next number
        self.flush(engine)
        write_snapshot(engine, self.snapshots / f"tick-{replay['next_tick']:012d}", replay)
        for old in sorted(self.snapshots.glob("tick-*"))[:-self.KEEP]:
            shutil.rmtree(old, ignore_errors=True)

    def events(self) -> pl.DataFrame:
        """Every event of the run, in sequence, from the journal."""
        parts = sorted(self.journal.glob("seq-*.parquet"), key=_seq_of)
        return pl.concat([pl.read_parquet(p) for p in parts], how="vertical_relaxed")  # ts: null in a part of load-time events


def _seq_of(part: Path) -> int:
    return int(part.stem.split("-")[1])


def _write_whole(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


