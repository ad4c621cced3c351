"""riskcore: a vectorised risk engine for large crypto-futures books."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("riskcore")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

from .book import Book
from .engine import Engine, TickError
from .errors import BookError, MoneyOverflowError
from .io import load_book
from .ops import apply_requests
from .output import OutputError
from .scan import ScanResult, scan
from .settle import Settlement, settle

__all__ = ["Book", "BookError", "Engine", "MoneyOverflowError", "OutputError", "ScanResult", "Settlement",
           "TickError", "apply_requests", "load_book", "scan", "settle"]
