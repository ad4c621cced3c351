"""The obvious alternative a desk would write: a straightforward polars pipeline (joins,
join_asof on tiers, group_by per account) computing the same liquidation flags.

Handles the generated books (derived maintenance amounts only).
"""

import polars as pl


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
