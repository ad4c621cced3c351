"""Every tunable of riskcore in one place: numba compilation flags, money defaults, Parquet output."""

import os

# fastmath without 'nnan'/'ninf': with those flags LLVM may delete the isnan/isinf checks
# the kernels rely on (infinite risk ratios, null liquidation prices). 'reassoc' is left out
# so sums are evaluated in source order and results are reproducible run to run. 'contract'
# is left out too: fusing a·b + c into one FMA rounds differently from the written formula and
# can move a decision at its exact boundary (scan time unchanged without it, measured at 1M).
FASTMATH = {"nsz", "arcp", "afn"}

# Compiled kernels are cached on disk so a CLI call does not pay compilation each time.
# RISKCORE_NO_CACHE=1 turns the cache off (e.g. on read-only installs).
CACHE = os.environ.get("RISKCORE_NO_CACHE", "") not in ("1", "true", "yes")

JIT = dict(nogil=True, cache=CACHE, fastmath=FASTMATH, error_model="numpy")
JIT_PARALLEL = dict(JIT, parallel=True)
# Exact money (money.py): every floor decision there rests on IEEE-exact float operations
# (m / 10^k == x, the error bounds of the certified paths), which 'arcp' or 'afn' could move.
JIT_EXACT = dict(JIT, fastmath=False)

DEFAULT_ASSET = "USDT"
DEFAULT_MONEY_SCALE = 8  # decimal places of money per settlement asset unless told otherwise

# Every Parquet file riskcore writes (io.write_parquet): polars' writer, which needs no Arrow
# copy and encodes columns in parallel, with snappy. Measured on the 10M scan's outputs
# (README, "Writing the scan's Parquet"): half the time of pyarrow's defaults, whose dictionary
# pass over every float column only costs time; zstd saves ~7% of the size for ~1 s more
# (the figures are full-precision floats: nearly incompressible).
PARQUET_COMPRESSION = "snappy"
