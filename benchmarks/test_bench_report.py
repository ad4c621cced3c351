"""Stress scenarios through the engine's liquidation (target: README, The risk report)."""

import pytest

from riskcore.stress import scenarios, stress
from bench_books import setup


@pytest.mark.parametrize("size", ["100k", "10M"])
@pytest.mark.parametrize("name", ["base", "all-10%"])
def test_stress_scenario(benchmark, size, name):
    """One scenario: the engine on its own copy of the book at the shocked marks, and its closes."""
    _, book, _ = setup(size)
    ladder = [s for s in scenarios(book) if s.name == name]
    result = benchmark.pedantic(lambda: stress(book, ladder=ladder), rounds=3, iterations=1)
    assert result.scenarios["scenario"].to_list() == [name]
    if name == "all-10%":
        assert result.scenarios["positions_closed"][0] > 0
