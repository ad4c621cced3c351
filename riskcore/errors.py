"""The one error type a user meets for bad input."""

import numpy as np

MAX_ROWS_SHOWN = 5


class BookError(ValueError):
    """Bad input: names the table (or file), the column and the offending rows."""

    def __init__(self, table: str, column: str | None, problem: str, rows=None):
        self.table, self.column, self.problem = table, column, problem
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        where = table if column is None else f"{table}: column '{column}'"
        msg = f"{where}: {problem}"
        if self.rows is not None:
            shown = ", ".join(str(r) for r in self.rows[:MAX_ROWS_SHOWN])
            more = len(self.rows) - MAX_ROWS_SHOWN
            msg += f" (rows {shown}{f' and {more} more' if more > 0 else ''}; {len(self.rows)} in all)"
        super().__init__(msg)


class MoneyOverflowError(BookError):
    """Money would leave the int64 fixed-point range (±(2^63 − 1) units): the operation is
    refused, never wrapped. Names the table (or file), column and rows like any BookError."""


def check(ok: np.ndarray, table: str, column: str | None, problem: str) -> None:
    """Raise BookError naming every row where `ok` is False."""
    bad = np.flatnonzero(~np.asarray(ok, dtype=bool))
    if len(bad):
        raise BookError(table, column, problem, bad)
