"""riskcore: a vectorised risk engine for large crypto-futures books."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("riskcore")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

from .book import Book
from .errors import BookError
from .io import load_book
from .scan import ScanResult, scan

__all__ = ["Book", "BookError", "ScanResult", "load_book", "scan"]
