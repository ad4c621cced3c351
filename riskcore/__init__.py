"""riskcore: a vectorised risk engine for large crypto-futures books."""

from .book import Book
from .errors import BookError
from .io import load_book
from .scan import ScanResult, scan

__all__ = ["Book", "BookError", "ScanResult", "load_book", "scan"]
