"""Slow, obviously-correct references that the tests hold riskcore to.

Each module is a plain per-row implementation written from docs/model.md, independent of
riskcore's loader, kernels and money code (it reads the polars input tables row by row and
computes in Decimal or Fraction):

- money:  what a number in a table means (the decimal a float prints as, rounded to units)
- scan:   position and account figures, flags (model §4–5)   -> riskcore.scan
- ops:    margin requests one at a time (model §7)            -> riskcore.ops
- engine: forced closes at the book's marks (model §8.3)      -> riskcore.engine
- settle: the funding / realize ledger (model §9)             -> riskcore.settle

Imported as `naive.*`: pytest puts tests/ on sys.path (tests/conftest.py makes sure).
"""
