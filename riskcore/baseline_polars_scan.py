"""The scan as a desk would write it in polars: what `riskcore bench` times against the whole
`riskcore scan BOOK --out DIR` process. A standalone script that imports nothing from
riskcore, so it is a fair outsider:

    python baseline_polars_scan.py BOOK/ OUT/

It reads the book's Parquet files (NAME.parquet each) and writes OUT/positions.parquet and
OUT/accounts.parquet with every figure of docs/model.md §4-5 that riskcore writes: notional,
upnl, im, tiered or fraction-model mm, fee, roe, isolated margin balance, risk ratio and flag;
per wallet equity, cross mm/im/fee, order margin, risk ratio, available, transferable, total
equity and flag. Not liquidation prices: they walk tier intervals per wallet and symbol,
solving hedged legs together (model §6), which has no reasonable expression as column
operations. Compare it with `riskcore scan --no-liq-price`.
"""

import sys
from pathlib import Path

import polars as pl

FIGURES = ["notional", "upnl", "im", "mm", "fee", "roe"]


def tiers(book: Path) -> pl.DataFrame:
    """Each tier with its maintenance amount: given, or derived so mm is continuous in the
    notional (a null amount continues from the previous tier's, given or derived)."""
    t = pl.read_parquet(book / "risk_tiers.parquet").sort("symbol", "notional_floor")
    if "maintenance_amount" not in t.columns:
        t = t.with_columns(maintenance_amount=pl.lit(None, pl.Float64))
    step = (pl.col("notional_floor") * (pl.col("mmr") - pl.col("mmr").shift(1, fill_value=0.0))).over("symbol")
    t = t.with_columns(derived=step.cum_sum().over("symbol"))
    base = (pl.col("maintenance_amount") - pl.col("derived")).forward_fill().over("symbol").fill_null(0.0)
    return t.select(pl.col("symbol").cast(pl.String), "notional_floor", "mmr",
                    cum=pl.coalesce("maintenance_amount", base + pl.col("derived"))).sort("notional_floor")


def main(book: Path, out: Path) -> None:
    inst = pl.read_parquet(book / "instruments.parquet").select(
        pl.col("symbol").cast(pl.String), inverse=pl.col("contract_type") == "inverse",
        settle_asset=pl.col("settle_asset").fill_null("USDT"), face=pl.col("face_value"),
        taker=pl.col("taker_fee_rate"), fraction=pl.col("mm_im_fraction"))
    marks = pl.read_parquet(book / "marks.parquet").select(pl.col("symbol").cast(pl.String), P="mark_price")
    accounts = pl.read_parquet(book / "accounts.parquet").select(
        "account_id", pl.col("asset").cast(pl.String), balance=pl.col("balance").cast(pl.Float64))

    size = pl.col("qty").abs() * pl.col("face")
    pos = (pl.read_parquet(book / "positions.parquet")
           .with_columns(pl.col("symbol").cast(pl.String), pl.col("position_side").cast(pl.String),
                         pl.col("margin_mode").cast(pl.String),
                         isolated_margin=pl.col("isolated_margin").cast(pl.Float64))
           .join(inst, on="symbol", how="left").join(marks, on="symbol", how="left")
           .with_columns(
               notional=pl.when("inverse").then(size / pl.col("P")).otherwise(size * pl.col("P")),
               upnl=pl.when("inverse")
               .then(pl.col("qty") * pl.col("face") * (1 / pl.col("entry_price") - 1 / pl.col("P")))
               .otherwise(pl.col("qty") * pl.col("face") * (pl.col("P") - pl.col("entry_price"))),
               entry_margin=pl.when("inverse").then(size / pl.col("entry_price")).otherwise(size * pl.col("entry_price"))
               / pl.col("leverage"))
           .sort("notional")
           .join_asof(tiers(book), left_on="notional", right_on="notional_floor", by="symbol",
                      check_sortedness=False)
           .with_columns(im=pl.col("notional") / pl.col("leverage"), fee=pl.col("notional") * pl.col("taker"))
           .with_columns(mm=pl.when(pl.col("fraction").is_not_null()).then(pl.col("fraction") * pl.col("im"))
                         .otherwise(pl.col("notional") * pl.col("mmr") - pl.col("cum")),
                         roe=pl.col("upnl") / pl.col("entry_margin"))
           # a flat position has every figure 0, even without a mark
           .with_columns(pl.when(pl.col("qty") == 0).then(0.0).otherwise(pl.col(f)).alias(f) for f in FIGURES)
           .with_columns(isolated=pl.col("margin_mode") == "isolated", open=pl.col("qty") != 0))

    iso_balance = pl.col("isolated_margin") + pl.col("upnl")
    pos = pos.with_columns(
        margin_balance=pl.when("isolated").then(iso_balance),
        risk_ratio=pl.when(~pl.col("isolated")).then(None).when(~pl.col("open")).then(0.0)
        .when(iso_balance <= 0).then(float("inf")).otherwise((pl.col("mm") + pl.col("fee")) / iso_balance),
        iso_liquidate=pl.col("isolated") & pl.col("open") & (iso_balance - pl.col("fee") <= pl.col("mm")))

    cross = pl.col("isolated").not_()
    sums = pos.group_by("account_id", pl.col("settle_asset").alias("asset")).agg(
        upnl=pl.col("upnl").filter(cross).sum(), cross_mm=pl.col("mm").filter(cross).sum(),
        cross_im=pl.col("im").filter(cross).sum(), cross_fee=pl.col("fee").filter(cross).sum(),
        has_cross=(cross & pl.col("open")).any(), iso_equity=iso_balance.filter("isolated").sum())
    orders = (pl.read_parquet(book / "orders.parquet")
              .with_columns(pl.col("symbol").cast(pl.String)).join(inst, on="symbol", how="left")
              .group_by("account_id", pl.col("settle_asset").alias("asset"))
              .agg(order_margin=(pl.col("qty").abs() * pl.col("face") / pl.col("leverage")
                                 * pl.when("inverse").then(1 / pl.col("price")).otherwise(pl.col("price"))).sum()))

    equity = pl.col("balance") + pl.col("upnl")
    acc = (accounts.join(sums, on=["account_id", "asset"], how="left").join(orders, on=["account_id", "asset"],
                                                                             how="left")
           .with_columns(pl.col("upnl", "cross_mm", "cross_im", "cross_fee", "iso_equity", "order_margin").fill_null(0.0),
                         pl.col("has_cross").fill_null(False))
           .select("account_id", "asset", equity=equity, cross_mm="cross_mm", cross_im="cross_im", cross_fee="cross_fee",
                   order_margin="order_margin",
                   risk_ratio=pl.when(~pl.col("has_cross")).then(0.0).when(equity <= 0).then(float("inf"))
                   .otherwise((pl.col("cross_mm") + pl.col("cross_fee")) / equity),
                   available_balance=pl.max_horizontal(0.0, equity - pl.col("cross_im") - pl.col("order_margin")),
                   transferable=pl.max_horizontal(0.0, pl.min_horizontal(
                       "balance", equity - pl.col("cross_mm") - pl.col("order_margin"))),
                   total_equity=equity + pl.col("iso_equity"),
                   liquidate=pl.col("has_cross") & (equity - pl.col("cross_fee") <= pl.col("cross_mm"))))

    # a cross position's flag is its wallet's
    positions = (pos.join(acc.select("account_id", pl.col("asset").alias("settle_asset"), wallet_liquidate="liquidate"),
                          on=["account_id", "settle_asset"], how="left")
                 .select("account_id", "symbol", "position_side", "margin_mode", "qty", *FIGURES, "margin_balance",
                         "risk_ratio", liquidate=pl.when("isolated").then("iso_liquidate")
                         .otherwise(pl.col("wallet_liquidate") & pl.col("open"))))
    out.mkdir(parents=True, exist_ok=True)
    # riskcore's codec, so the comparison is about the work, not the compression
    positions.write_parquet(out / "positions.parquet", compression="snappy")
    acc.write_parquet(out / "accounts.parquet", compression="snappy")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python baseline_polars_scan.py BOOK/ OUT/")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
