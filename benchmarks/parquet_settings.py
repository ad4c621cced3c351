"""How `riskcore scan --out` should write Parquet: the measurement behind config.PARQUET_COMPRESSION
(README, "Writing the scan's Parquet").

    python benchmarks/parquet_settings.py BOOK/ [--repeats 5]

Scans BOOK once, then writes its positions.parquet and accounts.parquet with each setting,
settings interleaved round by round so a noisy neighbour hurts them alike. Per setting: the
median seconds to write and fsync both files (a command flushes its output before publishing
it), their size, and the median seconds for polars to read them back.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from riskcore.io import load_book, write_parquet
from riskcore.scan import scan


def _text_columns(df: pl.DataFrame) -> list[str]:
    return [name for name, dtype in df.schema.items() if isinstance(dtype, (pl.Categorical, pl.Enum))]


def _pyarrow(dictionary_everywhere: bool = False, **options):
    def write(df: pl.DataFrame, path: Path) -> None:
        pq.write_table(df.to_arrow(), path, use_dictionary=True if dictionary_everywhere else _text_columns(df),
                       **options)
    return write


def _polars(**options):
    return lambda df, path: df.write_parquet(path, **options)


SETTINGS = {
    "pyarrow snappy, dictionary on every column (before)": _pyarrow(True),
    "pyarrow none, dictionary on text columns": _pyarrow(compression="none"),
    "pyarrow snappy, dictionary on text columns": _pyarrow(),
    "pyarrow lz4, dictionary on text columns": _pyarrow(compression="lz4"),
    "pyarrow zstd 1, dictionary on text columns": _pyarrow(compression="zstd", compression_level=1),
    "pyarrow zstd 3, dictionary on text columns": _pyarrow(compression="zstd", compression_level=3),
    "pyarrow zstd 1, dictionary on every column": _pyarrow(True, compression="zstd", compression_level=1),
    "pyarrow snappy, text dictionary, 128k-row groups": _pyarrow(row_group_size=1 << 17),
    "pyarrow snappy, text dictionary, one row group": _pyarrow(row_group_size=1 << 30),
    "polars uncompressed": _polars(compression="uncompressed"),
    "polars snappy": _polars(compression="snappy"),
    "polars lz4": _polars(compression="lz4"),
    "polars zstd 1": _polars(compression="zstd", compression_level=1),
    "polars zstd 3 (polars' default)": _polars(),
    "polars snappy, 128k-row groups": _polars(compression="snappy", row_group_size=1 << 17),
    "polars snappy, 1M-row groups": _polars(compression="snappy", row_group_size=1 << 20),
    "riskcore (io.write_parquet)": write_parquet,
}


def measure(frames: dict[str, pl.DataFrame], folder: Path, repeats: int) -> dict[str, tuple[float, float, float]]:
    """Setting -> (median write + fsync seconds, megabytes, median polars read seconds)."""
    written, read, size = ({name: [] for name in SETTINGS} for _ in range(3))
    for round_ in range(repeats):
        for name, write in SETTINGS.items():
            paths = [folder / f"{table}.parquet" for table in frames]
            t = time.perf_counter()
            for path, df in zip(paths, frames.values()):
                write(df, path)
                fd = os.open(path, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
            written[name].append(time.perf_counter() - t)
            size[name].append(sum(p.stat().st_size for p in paths) / 1e6)
            t = time.perf_counter()
            for path in paths:
                pl.read_parquet(path)
            read[name].append(time.perf_counter() - t)
            for path in paths:
                path.unlink()
        print(f"round {round_ + 1} of {repeats} done", file=sys.stderr, flush=True)
    return {name: (statistics.median(written[name]), size[name][-1], statistics.median(read[name]))
            for name in SETTINGS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("book", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result = scan(load_book(args.book))
    frames = {"positions": result.positions, "accounts": result.accounts}
    print(f"{result.positions.height:,} positions, {result.accounts.height:,} wallets; medians of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        table = measure(frames, Path(tmp), args.repeats)
    print(f"| {'setting':<52} | write + fsync | size | polars read |\n|---|---|---|---|")
    for name, (seconds, mb, read_s) in table.items():
        print(f"| {name:<52} | {seconds:.2f} s | {mb:,.0f} MB | {read_s:.2f} s |")


if __name__ == "__main__":
    main()
