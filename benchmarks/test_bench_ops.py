"""Margin-operation batches (docs/model.md §7): 10% as many requests as positions."""

import functools

import pytest

import riskcore as rc
from riskcore.gen import generate, generate_requests
from riskcore.ops import apply_requests
from bench_books import SIZES


@functools.cache
def setup(size):
    accounts, positions, symbols = SIZES[size]
    tables = generate(accounts, positions, symbols, seed=0)
    return rc.Book.from_tables(**tables), generate_requests(tables, positions // 10, seed=1)


@pytest.mark.parametrize("size", ["100k", "1M", "10M"])
def test_apply_requests(benchmark, size):
    book, requests = setup(size)
    new, outcomes = benchmark(apply_requests, book, requests)
    assert outcomes.height == requests.height and 0 < outcomes["accepted"].mean() < 1
