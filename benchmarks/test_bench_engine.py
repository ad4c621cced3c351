"""Ticks, Parquet load and settlement benchmarks (targets: README, Performance)."""

import numpy as np
import pytest

import riskcore as rc
from riskcore.engine import Engine
from riskcore.io import write_tables
from riskcore.settle import settle
from bench_books import setup


@pytest.mark.parametrize("size", ["100k", "1M", "10M"])
@pytest.mark.parametrize("symbols_per_tick", ["one", "all"])
def test_tick(benchmark, size, symbols_per_tick):
    tables, book, _ = setup(size)
    engine = Engine(book)
    rng = np.random.default_rng(0)
    n = len(book.instruments)
    m = 1 if symbols_per_tick == "one" else n
    ts = iter(range(10**9))

    def tick():
        s = np.sort(rng.choice(n, m, replace=False))
        engine.on_symbol_marks(s, engine.mark[s] * np.exp(rng.normal(0, 0.001, m)), next(ts))
    benchmark(tick)
    assert np.isfinite(engine.out.accounts["equity"]).all()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    cache = {}

    def get(size):
        if size not in cache:
            tables, _, _ = setup(size)
            path = tmp_path_factory.mktemp(f"book{size}")
            write_tables(tables, path / "book")
            tables["marks"].write_parquet(path / "marks.parquet")
            cache[size] = path
        return cache[size]
    return get


@pytest.mark.parametrize("size", ["100k", "1M", "10M"])
def test_parquet_load(benchmark, written, size):
    path = written(size)
    book = benchmark(rc.load_book, path / "book")
    assert len(book.positions) == setup(size)[1].positions.qty.size


@pytest.mark.parametrize("size", ["100k", "1M", "10M"])
def test_settlement(benchmark, written, size):
    path = written(size)
    runs = iter(range(10**6))

    def once():
        k = next(runs)
        return settle(path / "book", path / f"out{k}", marks=path / "marks.parquet", settlement_id=f"s{k}")
    result = benchmark.pedantic(once, rounds=3, iterations=1)
    assert result.positions == len(setup(size)[1].positions)
