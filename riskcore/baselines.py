"""What riskcore is measured against, in the same process (`riskcore bench`, benchmarks/):

- the obvious alternatives a desk would write for the same liquidation flags: a polars
  pipeline (joins, join_asof on tiers, group_by per account) and a numpy one (gathers, a
  mask per tier, bincount per wallet); both handle generated books (derived maintenance
  amounts);
- the bandwidth floor: a kernel that reads every input column of the scan and writes every
  output column once (positions' and wallets'), with the same threads and nothing else.
"""

import numpy as np
import polars as pl
from numba import njit, prange

from .book import Book
from .config import JIT_PARALLEL
from .kernels import ACCOUNT_FIGURES


def polars_flags(tables: dict[str, pl.DataFrame]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(isolated positions to liquidate, wallets to liquidate) as key frames."""
    inst = tables["instruments"].with_columns(pl.col("settle_asset").fill_null("USDT"))
    tiers = (tables["risk_tiers"].sort("symbol", "notional_floor")
             .with_columns(prev=pl.col("mmr").shift(1, fill_value=0.0).over("symbol"))
             .with_columns(cum=(pl.col("notional_floor") * (pl.col("mmr") - pl.col("prev"))).cum_sum().over("symbol"))
             .select(pl.col("symbol").cast(pl.String), "notional_floor", "mmr", "cum")
             .sort("notional_floor"))
    pos = (tables["positions"].with_columns(pl.col("symbol").cast(pl.String))
           .join(inst, on="symbol").join(tables["marks"].select("symbol", "mark_price"), on="symbol")
           .with_columns(inverse=pl.col("contract_type") == "inverse",
                         size=pl.col("qty").abs() * pl.col("face_value"))
           .with_columns(
               notional=pl.when("inverse").then(pl.col("size") / pl.col("mark_price"))
               .otherwise(pl.col("size") * pl.col("mark_price")),
               upnl=pl.when("inverse")
               .then(pl.col("qty") * pl.col("face_value") * (1 / pl.col("entry_price") - 1 / pl.col("mark_price")))
               .otherwise(pl.col("qty") * pl.col("face_value") * (pl.col("mark_price") - pl.col("entry_price"))))
           .sort("notional")
           .join_asof(tiers, left_on="notional", right_on="notional_floor", by="symbol", check_sortedness=False)
           .with_columns(im=pl.col("notional") / pl.col("leverage"), fee=pl.col("notional") * pl.col("taker_fee_rate"))
           .with_columns(mm=pl.when(pl.col("qty") == 0).then(0.0)
                         .when(pl.col("mm_im_fraction").is_not_null()).then(pl.col("mm_im_fraction") * pl.col("im"))
                         .otherwise(pl.col("notional") * pl.col("mmr") - pl.col("cum"))))
    iso = pos.filter((pl.col("margin_mode") == "isolated") & (pl.col("qty") != 0)
                     & (pl.col("isolated_margin") + pl.col("upnl") - pl.col("fee") <= pl.col("mm")))
    cross = (pos.filter(pl.col("margin_mode") == "cross")
             .group_by("account_id", pl.col("settle_asset").alias("asset"))
             .agg(pl.col("upnl").sum(), pl.col("mm").sum(), pl.col("fee").sum(), (pl.col("qty") != 0).any().alias("open")))
    accounts = (tables["accounts"].join(cross, on=["account_id", "asset"])
                .filter(pl.col("open") & (pl.col("balance") + pl.col("upnl") - pl.col("fee") <= pl.col("mm"))))
    return (iso.select("account_id", "symbol", pl.col("position_side").cast(pl.String)),
            accounts.select("account_id", "asset"))


def numpy_flags(book: Book, mark: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(isolated position flags, wallet flags) with plain vectorised numpy."""
    inst, pos, wal = book.instruments, book.positions, book.wallets
    s = pos.symbol
    inverse = inst.inverse[s]
    face, P = inst.face_value[s], mark[s]
    notional = np.where(inverse, np.abs(pos.qty) * face / P, np.abs(pos.qty) * face * P)
    upnl = np.where(inverse, pos.qty * face * (1 / pos.entry_price - 1 / P), pos.qty * face * (P - pos.entry_price))
    im = notional / pos.leverage
    tier = inst.tier_start[s].copy()
    for k in range(1, int(np.diff(inst.tier_start).max())):  # one mask per tier level
        nxt = inst.tier_start[s] + k
        inside = nxt < inst.tier_start[s + 1]
        tier = np.where(inside & (inst.tier_floor[np.minimum(nxt, len(inst.tier_floor) - 1)] <= notional), nxt, tier)
    mm = np.where(np.isnan(inst.mm_im_fraction[s]), notional * inst.tier_mmr[tier] - inst.tier_cum[tier],
                  inst.mm_im_fraction[s] * im)
    mm = np.where(pos.qty == 0, 0.0, mm)
    fee = notional * inst.taker_fee_rate[s]
    margin = pos.isolated_margin * book.symbol_unit[s] + upnl
    iso_flags = pos.isolated & (pos.qty != 0) & (margin - fee <= mm)
    cross = ~pos.isolated
    n = len(wal)
    sums = [np.bincount(pos.wallet[cross], weights=x[cross], minlength=n) for x in (upnl, mm, fee)]
    open_cross = np.bincount(pos.wallet[cross & (pos.qty != 0)], minlength=n) > 0
    equity = wal.balance * book.wallet_unit + sums[0]
    return iso_flags, open_cross & (equity - sums[2] <= sums[1])


@njit(**JIT_PARALLEL)
def _touch(symbol, qty, entry_unit, inv_leverage, isolated, isolated_units, outputs, flags,
           pos_start, balance, order_margin, wallet_outputs, wallet_flags):
    for i in prange(len(qty)):
        x = qty[i] + entry_unit[i] + inv_leverage[i] + isolated_units[i] + symbol[i]
        for k in range(outputs.shape[0]):
            outputs[k, i] = x
        flags[i] = isolated[i]
    for w in prange(len(balance)):
        x = pos_start[w] + balance[w] + order_margin[w]
        for k in range(wallet_outputs.shape[0]):
            wallet_outputs[k, w] = x
        wallet_flags[w] = x > 0


def bandwidth_floor(book: Book, n_outputs: int):
    """A callable that moves the scan's bytes once: reads its six position input columns and
    three wallet columns, writes `n_outputs` float columns and the flag per position, and the
    account figures (ACCOUNT_FIGURES float columns and the flag) per wallet."""
    pos, wal = book.positions, book.wallets
    outputs = np.empty((n_outputs, len(pos)))
    flags = np.empty(len(pos), dtype=bool)
    wallet_outputs = np.empty((len(ACCOUNT_FIGURES), len(wal)))
    wallet_flags = np.empty(len(wal), dtype=bool)
    return lambda: _touch(pos.symbol, pos.qty, pos.entry_unit, pos.inv_leverage, pos.isolated, pos.isolated_margin,
                          outputs, flags, wal.pos_start, wal.balance, wal.order_margin, wallet_outputs, wallet_flags)
