"""Output folders: a command writes only its own folder, whole or not at all.

A command stages everything it writes in a private folder beside OUT and publishes it in
one step: an atomic exchange of the two folders (Linux `renameat2(RENAME_EXCHANGE)`), so a
reader of OUT sees the previous complete output or the new one, never a mix and never a gap.
What riskcore writes carries a manifest (`MANIFEST`: command, version, files and sizes);
that is how riskcore knows a folder is its own. It refuses, with one line:
- an OUT that is an input, lies inside one or contains one (inputs are never touched, even
  with `force`);
- an OUT that is a file, a symbolic link or the current folder;
- a non-empty OUT it did not write, or wrote with another command (`force` replaces those).

Every run holds an exclusive lock (`flock`) on its own lock file for its whole life, so a
leftover of a killed run is recognised as dead for certain (the kernel drops a dead
process's locks) and cleaned by the next run into the same OUT; a live run's staging folder
is never touched. Setting up and publishing happen under a lock on the parent folder, so two
runs racing for one OUT publish one after the other, each whole.
"""

import ctypes
import errno
import fcntl
import json
import os
import secrets
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import BookError
from .io import writing

MANIFEST = ".riskcore-output.json"
_TAG = ".riskcore-"  # staging, lock and old-copy names: .OUT.riskcore-TOKEN[.lock|.old]


class OutputError(BookError):
    """An output folder riskcore will not write (names the folder and why)."""

    def __init__(self, out: Path, problem: str):
        super().__init__(str(out), None, problem)


@contextmanager
def output_dir(out, *, command: str, inputs=(), force: bool = False):
    """Yield a private staging folder; on success publish it as `out` whole, on any failure
    (or a kill) leave `out` as it was. `inputs` are paths the command reads (never written,
    never inside or around `out`)."""
    out = check_output(out, command=command, inputs=inputs, force=force)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    stage = out.with_name(f".{out.name}{_TAG}{token}")
    lock = Path(f"{stage}.lock")
    with writing(out):  # errors of the set-up (no permission, a full disk) name OUT
        out.parent.mkdir(parents=True, exist_ok=True)
        with _locked(out.parent):
            _clean_dead_runs(out)
            _check_existing(out, command, force)
            lock_fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
    try:
        with writing(out):  # a full disk fails naming at least the output folder
            stage.mkdir()
            yield stage
            _write_manifest(stage, command)
            _fsync_tree(stage)
            with _locked(out.parent):
                _check_existing(out, command, force)  # it may have changed while we computed
                _publish(stage, out)
    except BookError as e:  # name the file the user asked for, not its staging copy
        if not e.table.startswith(str(stage)):
            raise
        same_kind = type(e) if type(e).__init__ is BookError.__init__ else BookError  # keep MoneyOverflowError
        raise same_kind(str(out) + e.table[len(str(stage)):], e.column, e.problem, e.rows) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # after a publish it holds the previous output
        with _locked(out.parent):  # not while another run is cleaning up beside us
            lock.unlink(missing_ok=True)
        os.close(lock_fd)


def check_output(out, *, command: str, inputs=(), force: bool = False) -> Path:
    """Refuse now (OutputError) what output_dir would refuse, before a long computation;
    returns OUT as an absolute path."""
    out = Path(os.path.abspath(out))
    _check_target(out, [Path(p) for p in inputs if p is not None])
    _check_existing(out, command, force)
    return out


def is_riskcore_output(folder: Path) -> dict | None:
    """The manifest of a folder riskcore wrote, or None."""
    try:
        return json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _check_target(out: Path, inputs: list[Path]) -> None:
    if out.is_symlink():
        raise OutputError(out, "is a symbolic link; give the folder itself")
    if out.exists() and not out.is_dir():
        raise OutputError(out, "is a file; the output is a folder")
    real = Path(os.path.realpath(out))
    if real == Path(os.path.realpath(os.getcwd())) or real in Path(os.path.realpath(os.getcwd())).parents:
        raise OutputError(out, "is the current folder (or holds it); riskcore replaces OUT whole, name another folder")
    _refuse_inputs(out, inputs, holding=True)


def _refuse_inputs(out: Path, inputs, *, holding: bool) -> None:
    """OutputError if `out` is one of `inputs` or lies inside one, or (`holding`: a folder
    replaced whole) holds one."""
    real = Path(os.path.realpath(out))
    for given in inputs:
        src = Path(os.path.realpath(given))
        if src == real:
            raise OutputError(out, f"is the input {given}; riskcore never writes over its input")
        if holding and real in src.parents:
            raise OutputError(out, f"holds the input {given}; riskcore never writes over its input")
        if src in real.parents:
            raise OutputError(out, f"lies inside the input {given}; riskcore never writes into its input")


def _check_existing(out: Path, command: str, force: bool) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        _check_target(out, [])
    if not out.is_dir() or force or not any(out.iterdir()):
        return
    manifest = is_riskcore_output(out)
    if manifest is None:
        raise OutputError(out, "is a non-empty folder riskcore did not write; name a new or empty folder "
                               "(or --force to replace it)")
    if manifest.get("command") != command:
        raise OutputError(out, f"holds the output of 'riskcore {manifest.get('command')}', which "
                               f"'riskcore {command}' would replace; name another folder (or --force)")
    added = sorted(set(_files(out)) - set(manifest.get("files", {})) - {MANIFEST})
    if added:
        raise OutputError(out, f"holds files riskcore did not write ({', '.join(added[:3])}"
                               f"{f' and {len(added) - 3} more' if len(added) > 3 else ''}), which replacing it would "
                               f"delete; move them or name another folder (or --force)")


@contextmanager
def _locked(folder: Path):
    """An exclusive lock on a folder (flock on its descriptor), released on exit or death."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _clean_dead_runs(out: Path) -> None:
    """Remove what killed runs into `out` left; restore a previous output a run killed
    between the two renames of the fallback publish had moved aside."""
    prefix = f".{out.name}{_TAG}"
    for name in os.listdir(out.parent):  # not glob: OUT's name may hold [, * or ?
        if not (name.startswith(prefix) and name.endswith(".lock")):
            continue
        lock = out.parent / name
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its run is alive
            stage = Path(str(lock)[:-len(".lock")])
            old = Path(f"{stage}.old")
            if old.is_dir() and not out.exists():
                old.rename(out)
            shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(stage, ignore_errors=True)
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _files(folder: Path) -> dict[str, int]:
    """Every file below a folder (relative path → size); empty folders count as files, so
    a user's empty folder is not deleted unnoticed either."""
    found = {}
    for root, dirs, files in os.walk(folder):
        rel = os.path.relpath(root, folder)
        for name in files + [d for d in dirs if not os.listdir(os.path.join(root, d))]:
            path = os.path.normpath(os.path.join(rel, name))
            found[path] = os.path.getsize(os.path.join(root, name))
    return found


def _write_manifest(stage: Path, command: str) -> None:
    from . import __version__  # looked up only when a command writes
    files = _files(stage)
    manifest = dict(riskcore=__version__, command=command, written_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    argv=sys.argv[1:], files=files)
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _fsync_tree(folder: Path) -> None:
    """Files and folders on disk before they are published (a power cut then leaves the old
    or the new output, as a kill does)."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(root)


def _fsync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(stage: Path, out: Path) -> None:
    if not out.exists():
        stage.rename(out)
    elif not _exchange(stage, out):
        # no atomic exchange here: move the old output aside, then the new one in. A kill
        # between the two renames is repaired by the next run (_clean_dead_runs).
        old = Path(f"{stage}.old")
        out.rename(old)
        try:
            stage.rename(out)
        except BaseException:
            old.rename(out)
            raise
        old.rename(stage)
    _fsync_dir(out.parent)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders atomically; False where the system cannot (the caller falls back)."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _libc():
    return ctypes.CDLL(None, use_errno=True)


# -- single files (`riskcore report`: a page and its table beside it) ----------------------
def written_by(path: Path, marker: str) -> bool:
    """Whether riskcore wrote this file: a Parquet file's `generator` metadata, or the marker
    within the first 4 KiB of any other file (the page's <meta name="generator">)."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq
            meta = pq.read_schema(path).metadata or {}
            return meta.get(b"generator", b"").decode(errors="replace") == marker
        with open(path, "rb") as f:
            return marker.encode() in f.read(4096)
    except (OSError, ValueError, ImportError):
        return False
    except Exception:  # pyarrow's errors on a file that is not Parquet
        return False


def check_files(targets, *, command: str, inputs=(), force: bool = False, marker: str) -> list[Path]:
    """Refuse now (OutputError) what write_files would refuse: a target that is an input or
    lies inside one, a folder, a symbolic link, or an existing file riskcore did not write
    (`force` replaces such a file, never an input)."""
    paths = [Path(os.path.abspath(t)) for t in targets]
    given = [Path(p) for p in inputs if p is not None]
    for out in paths:
        if out.is_symlink():
            raise OutputError(out, "is a symbolic link; give the file itself")
        if out.is_dir():
            raise OutputError(out, "is a folder; the output is a file")
        _refuse_inputs(out, given, holding=False)
        if out.exists() and not force and not written_by(out, marker):
            raise OutputError(out, f"exists and riskcore did not write it; name a new file (or --force to "
                                   f"replace it)")
    return paths


def write_files(contents: dict, *, command: str, inputs=(), force: bool = False, marker: str) -> None:
    """Write each file whole: into a private file beside it, flushed to disk, then renamed
    over it in one step (a reader sees the old file or the new one). A leftover of a killed
    run (`.NAME.riskcore-PID-…`, its process gone) is removed."""
    paths = check_files(list(contents), command=command, inputs=inputs, force=force, marker=marker)
    for out, data in zip(paths, contents.values()):
        with writing(out):
            out.parent.mkdir(parents=True, exist_ok=True)
            _clean_dead_files(out)
            tmp = out.with_name(f".{out.name}{_TAG}{os.getpid()}-{secrets.token_hex(4)}")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, out)
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(out.parent)


def _clean_dead_files(out: Path) -> None:
    prefix = f".{out.name}{_TAG}"
    for name in os.listdir(out.parent):
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            (out.parent / name).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
