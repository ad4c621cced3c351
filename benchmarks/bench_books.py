"""The benchmark books, generated once per size and process (shared by every benchmark file)."""

import functools

import riskcore as rc
from riskcore.gen import generate
from riskcore.scan import ScanArrays

SIZES = {"100k": (10_000, 100_000, 100), "1M": (100_000, 1_000_000, 200), "10M": (1_000_000, 10_000_000, 500)}


@functools.cache
def setup(size):
    accounts, positions, symbols = SIZES[size]
    tables = generate(accounts, positions, symbols, seed=0)
    book = rc.Book.from_tables(**tables)
    return tables, book, ScanArrays.empty(len(book.positions), len(book.wallets))
