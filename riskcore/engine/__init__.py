"""The tick engine (docs/model.md §8), one job per module:

- core.py: `Engine`, the orchestration of ticks → state → liquidation rounds → events;
- ticks.py: `TickError`, one tick's checks, `load_ticks` (a whole tick table);
- state.py: `TickState`, the incremental figures (symbol-major mirror, per-wallet running sums);
- screen.py: `Screen`, which wallets a tick moving most of the book can change;
- events.py: `EventLog`, the event log as growable columns, and the events table;
- liquidation.py: forced close, fee, insurance fund, bankruptcy price and ADL, a round of
  closes at a time (`run_round`: a compiled pass, with a general planner in Python integers
  for the closes it cannot certify);
- durable.py: snapshots (`Engine.snapshot` / `Engine.restore`), the events journal and the
  state folder of a resumable replay.
"""

from .core import FULL_SCAN_SHARE, RESYNC_EVERY, Engine
from .durable import SnapshotError
from .events import (ACCOUNT_LIQUIDATABLE, ADL_CLOSE, EVENT_KINDS, FUND_SHORTFALL, LIQUIDATION_CLOSE,
                     POSITION_LIQUIDATABLE, EventLog)
from .ticks import TickError, load_ticks

__all__ = ["ACCOUNT_LIQUIDATABLE", "ADL_CLOSE", "EVENT_KINDS", "FULL_SCAN_SHARE", "FUND_SHORTFALL",
           "LIQUIDATION_CLOSE", "POSITION_LIQUIDATABLE", "RESYNC_EVERY", "Engine", "EventLog", "SnapshotError",
           "TickError", "load_ticks"]
