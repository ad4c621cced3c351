"""Integer keys of positions, the one encoding every module uses (book, ops, settle, gen).

A position is (wallet, symbol, side) with dense ids; its key is
`(wallet·n_symbols + symbol)·N_SIDES + side`, so sorting by key is sorting by wallet, symbol
and side (the book's row order), and the keys of one (wallet, symbol) group — both legs of a
hedge-mode symbol — are the contiguous range `group_range`. A group with its margin mode is
`group·2 + isolated` (one mode per account and symbol, checked across parts).
"""

import numpy as np

N_SIDES = 3  # book.SIDES: both, long, short


def group_key(wallet, symbol, n_symbols: int) -> np.ndarray:
    """The (wallet, symbol) group: wallet·n_symbols + symbol, int64."""
    return np.asarray(wallet).astype(np.int64) * n_symbols + symbol


def position_key(wallet, symbol, side, n_symbols: int) -> np.ndarray:
    """The position (wallet, symbol, side): group·N_SIDES + side, int64."""
    return group_key(wallet, symbol, n_symbols) * N_SIDES + side


def group_of(key) -> np.ndarray:
    """The (wallet, symbol) group of position keys."""
    return key // N_SIDES


def group_range(wallet, symbol, n_symbols: int) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi): every position key the (wallet, symbol) group can hold."""
    lo = group_key(wallet, symbol, n_symbols) * N_SIDES
    return lo, lo + N_SIDES


def decode_group(group, n_symbols: int) -> tuple[np.ndarray, np.ndarray]:
    """(wallet, symbol) of group keys."""
    return group // n_symbols, group % n_symbols


def decode_position(key, n_symbols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(wallet, symbol, side) of position keys."""
    return (*decode_group(group_of(key), n_symbols), key % N_SIDES)


def mode_key(group, isolated) -> np.ndarray:
    """A group with its margin mode: group·2 + isolated."""
    return group * 2 + isolated


def decode_mode_key(key) -> tuple[np.ndarray, np.ndarray]:
    """(group, isolated) of mode keys (keys are never negative: shifts, not divisions)."""
    return key >> 1, (key & 1) == 1
