"""The risk report (`riskcore report`, docs/model.md §12): one self-contained HTML page a risk
officer reads and forwards — the stress ladder through the engine's liquidation, a
liquidation map per symbol, the distribution and concentration of risk — and the scenario
table as Parquet beside it.

Everything plotted is aggregated here first (histograms, price bins, top-N tables), so the
page carries kilobytes of data whatever the size of the book; the plotting library
(plotly.js, inlined once) draws a few thousand marks at most. The page needs no network.
"""

import html
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from .book import Book
from .io import as_book, as_table
from .stress import StressResult, asset_prices, open_interest, stress

MAP_SYMBOLS = 6          # liquidation maps drawn per symbol (largest open interest first)
HEATMAP_SYMBOLS = 20     # rows of the liquidation heatmap
MAP_RANGE = 0.5          # price levels within ±50% of the mark
MAP_BINS = 100           # price levels per symbol map (1% of the mark each)
TOP_ACCOUNTS = 20        # rows of each "top accounts" table
RISK_BINS = np.linspace(0.0, 1.5, 76)          # risk ratio histogram: 0.02 wide, ≥ 1.5 and ∞ counted apart
DISTANCE_BINS = np.linspace(0.0, 0.5, 101)     # distance to liquidation: 0.5% wide, ≥ 50% counted apart
GENERATOR = "riskcore report"


@dataclass
class Report:
    """What `build_report` computed: the page, the stress result, and seconds per step."""
    html: str
    stress: StressResult
    seconds: dict


def build_report(book, marks=None, *, insurance_fund=None, coins: int = 3, ladder=None, title: str | None = None,
                 progress: Callable[[str], None] | None = None) -> Report:
    """The report of a book at `marks` (default the book's own) with the insurance fund
    `insurance_fund` (asset, balance; default empty) at the start of every scenario;
    `ladder` (a list of stress.Scenario) replaces the default scenarios."""
    from .scan import scan
    from . import __version__
    book = as_book(book)
    marks, marks_name = as_table(marks, "marks")
    mark = book.mark if marks is None else book.read_marks(marks, marks_name)[0]
    book.check_marks(mark, None if marks is None else marks_name)
    seconds = {}
    t = time.perf_counter()
    base = scan(book, None if marks is None else marks)
    seconds["scan"] = time.perf_counter() - t
    t = time.perf_counter()
    result = stress(book, marks, insurance_fund=insurance_fund, coins=coins, ladder=ladder, progress=progress)
    seconds["stress"] = time.perf_counter() - t
    t = time.perf_counter()
    quote = result.quote
    price = asset_prices(book, mark, quote)
    sections = [
        _stress_section(result),
        _map_section(book, mark, base.positions, price, quote),
        _distribution_section(book, mark, base, price, result),
    ]
    fund = as_table(insurance_fund, "insurance_fund")[0]
    page = _page(title or "riskcore risk report", _header(book, base, quote, fund, __version__), sections)
    seconds["page"] = time.perf_counter() - t
    return Report(page, result, seconds)


def scenarios_path(out: Path) -> Path:
    """report.html → report.scenarios.parquet (beside the page)."""
    out = Path(out)
    return out.with_name(out.stem + ".scenarios.parquet")


# -- numbers for people -----------------------------------------------------------------
def fmt(x, digits: int = 2) -> str:
    """Thousands separators; small amounts with enough significant digits; ∞ and — for none."""
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "—"
    if isinstance(x, (int, np.integer)):
        return f"{x:,}"
    if np.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x != 0 and abs(x) < 1:
        return f"{x:,.6g}"
    return f"{x:,.{digits}f}"


def _table(frame: pl.DataFrame, columns: dict, caption: str = "", table_id: str = "") -> str:
    """A sortable HTML table: `columns` maps a frame column to its header (a header with a
    unit says it); numbers are right-aligned, sorted by value (click a header)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in columns.values())
    body = []
    for row in frame.select(list(columns)).iter_rows():
        cells = []
        for v in row:
            if v is None:
                cells.append('<td class="n" data-v="">—</td>')
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                key = "Infinity" if v == float("inf") else ("" if v != v else repr(float(v)))
                cells.append(f'<td class="n" data-v="{key}">{fmt(v)}</td>')
            else:
                cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{caption}</caption>" if caption else ""
    return (f'<table class="sortable" id="{table_id}">{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _figure(fig, legend: str, div_id: str) -> str:
    import plotly.io as pio
    fig.update_layout(template="plotly_white", margin=dict(l=70, r=30, t=fig.layout.margin.t or 50, b=50), separators=".,",
                      font=dict(family="system-ui, sans-serif", size=12))
    plot = pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})
    return f'<figure>{plot}<figcaption>{legend}</figcaption></figure>'


# -- the stress ladder ------------------------------------------------------------------
def _stress_section(result: StressResult) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    q = result.quote
    s = result.scenarios
    # the uniform shocks by their move (base is 0%); other scenarios get the second chart
    ladder = (s.with_columns(shock=pl.when(pl.col("scenario") == "base").then(pl.lit("0"))
                             .otherwise(pl.col("scenario").str.extract(r"^all([+-]\d+)%$")).cast(pl.Int64))
              .filter(pl.col("kind").is_in(["uniform", "base"]) & pl.col("shock").is_not_null()))
    order = np.argsort(ladder["shock"].to_numpy(), kind="stable")
    x = ladder["shock"].to_numpy()[order]

    def col(name, frame=ladder, sort=order):
        return frame[name].to_numpy()[sort]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_bar(x=x, y=col("notional_liquidated"), name=f"notional liquidated ({q})", marker_color="#9ecae1",
                hovertemplate="%{x:+d}%: %{y:,.0f} " + q + "<extra>notional liquidated</extra>")
    for name, color in (("deficit", "#d62728"), ("fund_used", "#ff7f0e"), ("fund_shortfall", "#7f0000"),
                        ("adl_notional", "#9467bd")):
        fig.add_scatter(x=x, y=col(name), name=f"{name.replace('_', ' ')} ({q})", mode="lines+markers",
                        line_color=color, hovertemplate="%{x:+d}%: %{y:,.0f} " + q + f"<extra>{name}</extra>")
    fig.add_scatter(x=x, y=col("wallets_liquidated") + col("isolated_liquidated"), name="liquidations (count)",
                    mode="lines", line=dict(color="#333", dash="dot"), secondary_y=True,
                    hovertemplate="%{x:+d}%: %{y:,} wallets + isolated positions<extra></extra>")
    fig.update_layout(title="Stress ladder: every mark moved by the same percentage", barmode="overlay",
                      legend=dict(orientation="h", y=-0.2), height=480)
    fig.update_xaxes(title="move of every mark (%)", ticksuffix="%", dtick=5)
    fig.update_yaxes(title=f"{q}", tickformat=",.0f", secondary_y=False)
    fig.update_yaxes(title="wallets + isolated positions liquidated", tickformat=",d", secondary_y=True,
                     showgrid=False, rangemode="tozero")
    fig.update_yaxes(rangemode="tozero", secondary_y=False)
    legend = (f"Each point is one scenario run through the engine's forced liquidation on a copy of the book: "
              f"closes at the shocked marks, liquidation fees to the insurance fund, deficits paid by the fund, "
              f"auto-deleveraging (ADL) at bankruptcy prices when the fund cannot pay. <b>Notional liquidated</b>: "
              f"positions force-closed, at the shocked marks. <b>Deficit</b>: losses beyond the margin of the "
              f"liquidated wallets and isolated positions. <b>Fund used</b>: paid out by the insurance fund; "
              f"<b>fund shortfall</b>: how far it ended below zero. <b>ADL notional</b>: opposite positions "
              f"closed to cover deficits. The 0% point is the book at its marks (what is liquidatable now). "
              f"Amounts in {q} at each scenario's marks.")
    others = s.filter(~pl.col("kind").is_in(["uniform", "base"]))
    fig2 = go.Figure()
    for name, color in (("notional_liquidated", "#9ecae1"), ("deficit", "#d62728"), ("adl_notional", "#9467bd")):
        fig2.add_bar(x=others["scenario"], y=others[name], name=f"{name.replace('_', ' ')} ({q})", marker_color=color,
                     hovertemplate="%{x}: %{y:,.0f} " + q + f"<extra>{name}</extra>")
    fig2.update_layout(title="The largest coins alone, and a market crash with betas", barmode="group", height=420,
                       legend=dict(orientation="h", y=-0.2))
    fig2.update_yaxes(title=q, tickformat=",.0f")
    legend2 = ("<b>COIN±20%</b>: only that coin's contracts (linear and inverse together) move; every other mark "
               "stays. <b>market−20%</b>: BTC −20% and every coin by its beta in log terms (ETH 1.2, other majors "
               "1.3, other coins 1.5): the correlated crash. Same columns as the ladder.")
    columns = {"scenario": "scenario", "wallets_liquidated": "wallets liquidated",
               "isolated_liquidated": "isolated liquidated", "positions_closed": "positions closed",
               "notional_liquidated": f"notional liquidated ({q})", "deficit": f"deficit ({q})",
               "fund_fees": f"fund fees in ({q})", "fund_used": f"fund used ({q})",
               "fund_shortfall": f"fund shortfall ({q})", "adl_positions": "ADL closes",
               "adl_notional": f"ADL notional ({q})", "seconds": "seconds"}
    table = _table(s.with_columns(pl.col("seconds").round(2)), columns, "Every scenario (click a header to sort). Also in the .scenarios.parquet file "
                               "beside this page.", "scenarios")
    return ('<section id="stress"><h2>Stress scenarios</h2>' + _figure(fig, legend, "fig-ladder")
            + _figure(fig2, legend2, "fig-coins") + table + "</section>")


# -- the liquidation map ----------------------------------------------------------------
def liquidation_map(book: Book, mark: np.ndarray, positions: pl.DataFrame, price: np.ndarray,
                    quote: str | None = None) -> tuple[list[int], np.ndarray]:
    """The symbols with the largest open interest (up to HEATMAP_SYMBOLS, largest first) and,
    per symbol, side (0 short, 1 long) and band of the mark, the notional in the quote whose
    liquidation price lies in that band: band k covers moves of the mark from
    −MAP_RANGE + k·w to −MAP_RANGE + (k+1)·w, w = 2·MAP_RANGE / MAP_BINS. Open positions
    with a liquidation price that are not liquidatable already (`positions`: a scan's)."""
    pos, inst = book.positions, book.instruments
    liq = positions["liq_price"].fill_null(np.nan).to_numpy()
    notional = positions["notional"].to_numpy() * price[inst.settle_asset[pos.symbol]]
    ok = np.isfinite(liq) & (pos.qty != 0) & ~positions["liquidate"].to_numpy() & np.isfinite(notional)
    sym, notional, long = pos.symbol[ok], notional[ok], pos.qty[ok] > 0
    move = liq[ok] / mark[sym] - 1.0                       # the move of this symbol's mark that liquidates
    oi = open_interest(book, mark, quote)
    top = [int(s) for s in np.argsort(-np.nan_to_num(oi), kind="stable")[:HEATMAP_SYMBOLS] if oi[s] > 0]
    rank = np.full(len(inst), -1)
    rank[top] = np.arange(len(top))
    keep = (rank[sym] >= 0) & (np.abs(move) < MAP_RANGE)
    # every (symbol, side, band) in one pass
    band = np.clip(np.floor((move[keep] + MAP_RANGE) / (2 * MAP_RANGE) * MAP_BINS).astype(np.int64), 0, MAP_BINS - 1)
    cell = (rank[sym[keep]] * 2 + long[keep]) * MAP_BINS + band
    by_side = np.bincount(cell, weights=notional[keep], minlength=len(top) * 2 * MAP_BINS)
    return top, by_side.reshape(len(top), 2, MAP_BINS)


def _map_section(book: Book, mark: np.ndarray, positions: pl.DataFrame, price: np.ndarray, quote: str) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    inst = book.instruments
    top, by_side = liquidation_map(book, mark, positions, price, quote)
    if not top:
        return '<section id="map"><h2>Liquidation map</h2><p>No open positions.</p></section>'
    edges = np.linspace(-MAP_RANGE, MAP_RANGE, MAP_BINS + 1)
    grid = by_side.sum(axis=1)
    names = [inst.symbol[s] for s in top]
    centers = (edges[:-1] + edges[1:]) / 2 * 100
    with np.errstate(divide="ignore"):
        z = np.where(grid > 0, np.log10(grid), np.nan)
    heat = go.Figure(go.Heatmap(
        x=centers, y=names, z=z, customdata=grid, colorscale="Inferno", reversescale=True,
        colorbar=dict(title=f"{quote} (log)", tickvals=list(range(0, 12)),
                      ticktext=[fmt(10.0 ** k, 0) for k in range(0, 12)]),
        hovertemplate="%{y} at %{x:+.1f}% from the mark: %{customdata:,.0f} " + quote + "<extra></extra>"))
    heat.update_layout(title=f"Liquidation heatmap: notional liquidating per 1% move, {len(top)} largest symbols",
                       height=max(360, 26 * len(top) + 140), yaxis=dict(autorange="reversed"))
    heat.update_xaxes(title="move of the symbol's mark that liquidates (%)", ticksuffix="%", zeroline=True)
    heat_legend = (f"Each cell: the notional ({quote}) of positions whose liquidation price lies in that 1% band "
                   f"of the symbol's mark — to the left what liquidates as the price falls (longs), to the right "
                   f"as it rises (shorts). Cross positions' liquidation prices hold every other mark where it is. Symbols by open "
                   f"interest (gross notional), largest first; colour on a log scale; positions already "
                   f"liquidatable are in the stress ladder's 0% point, not here.")
    n_maps = min(MAP_SYMBOLS, len(top))
    cols = 2
    rows = (n_maps + cols - 1) // cols
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names[:n_maps], vertical_spacing=0.12)
    for k in range(n_maps):
        s, r, c = top[k], k // cols + 1, k % cols + 1
        levels = mark[s] * (1 + (edges[:-1] + edges[1:]) / 2)
        for side, color, label in ((1, "#d62728", "longs"), (0, "#2ca02c", "shorts")):
            fig.add_bar(x=levels, y=by_side[k, side], name=label, marker_color=color, showlegend=(k == 0), legendgroup=label,
                        row=r, col=c, hovertemplate="price %{x:,.6g}: %{y:,.0f} " + quote + f"<extra>{label}</extra>")
        fig.add_vline(x=float(mark[s]), line=dict(color="#333", dash="dash"), row=r, col=c)
    fig.update_layout(title=f"Liquidation map: notional liquidating at each price level ({quote})", barmode="stack",
                      bargap=0, height=300 * rows + 140, legend=dict(orientation="h", y=-0.08), margin=dict(t=110))
    fig.update_yaxes(tickformat=",.3~s")
    map_legend = (f"Per symbol, the notional ({quote}) that liquidates if the mark reaches each price level (bands "
                  f"of 1% of the mark, ±50%): long positions red, short positions green, the mark dashed. Longs sit "
                  f"below the mark and shorts above, but for a hedge-mode leg of a wallet that is net the other way "
                  f"(it liquidates with its wallet). A tall bar near the mark is a cascade waiting to happen.")
    return ('<section id="map"><h2>Liquidation map</h2>' + _figure(heat, heat_legend, "fig-heatmap")
            + _figure(fig, map_legend, "fig-maps") + "</section>")


# -- distribution and concentration -----------------------------------------------------
def _distribution_section(book: Book, mark: np.ndarray, base, price: np.ndarray, result: StressResult) -> str:
    import plotly.graph_objects as go
    q = result.quote
    pos, inst = book.positions, book.instruments
    acc = base.accounts
    p = base.positions
    wallet_price = price[book.wallets.asset]
    # risk ratios: cross wallets with a position, isolated positions
    rr = acc["risk_ratio"].to_numpy()
    cross = acc["cross_mm"].to_numpy() > 0
    iso_rr = p["risk_ratio"].fill_null(np.nan).to_numpy()[pos.isolated & (pos.qty != 0)]
    fig = go.Figure()
    for values, label, color in ((rr[cross], "cross wallets", "#1f77b4"), (iso_rr, "isolated positions", "#ff7f0e")):
        counts, _ = np.histogram(values[np.isfinite(values)], RISK_BINS)
        fig.add_bar(x=RISK_BINS[:-1] + 0.01, y=counts, name=label, marker_color=color, opacity=0.75,
                    hovertemplate="risk %{x:.2f}: %{y:,}<extra>" + label + "</extra>")
    fig.add_vline(x=1.0, line=dict(color="#d62728", dash="dash"))
    fig.update_layout(title="Risk ratio: maintenance margin + closing fee over equity", barmode="overlay",
                      height=380, legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(title="risk ratio")
    fig.update_yaxes(title="count", tickformat=",d")
    over = int(np.sum(rr[cross] >= RISK_BINS[-1])) + int(np.sum(iso_rr >= RISK_BINS[-1]))
    inf = int(np.sum(np.isinf(rr[cross]))) + int(np.sum(np.isinf(iso_rr)))
    risk_legend = (f"Risk ratio = (maintenance margin + closing fee) / equity (isolated: / margin balance). At 1 "
                   f"(dashed) or above, the wallet or position is liquidated; ∞ means equity is zero or negative. "
                   f"Not drawn: {fmt(over)} at 1.5 or above, of which {fmt(inf)} at ∞.")
    # distance to liquidation, weighted by notional
    liq = p["liq_price"].fill_null(np.nan).to_numpy()
    open_ = (pos.qty != 0) & np.isfinite(liq) & ~p["liquidate"].to_numpy()
    dist = np.abs(liq[open_] / mark[pos.symbol[open_]] - 1.0)
    notional = (p["notional"].to_numpy() * price[inst.settle_asset[pos.symbol]])[open_]
    weight, _ = np.histogram(dist, DISTANCE_BINS, weights=np.nan_to_num(notional))
    count, _ = np.histogram(dist, DISTANCE_BINS)
    fig2 = go.Figure()
    fig2.add_bar(x=DISTANCE_BINS[:-1] * 100 + 0.25, y=weight, name=f"notional ({q})", marker_color="#1f77b4",
                 customdata=count, hovertemplate="%{x:.1f}% away: %{y:,.0f} " + q + ", %{customdata:,} positions"
                                                 "<extra></extra>")
    fig2.update_layout(title="Distance to liquidation: how far the mark must move", height=380)
    fig2.update_xaxes(title="move of the mark that liquidates (%)", ticksuffix="%")
    fig2.update_yaxes(title=f"notional ({q})", tickformat=",.3~s")
    far = int(np.sum(dist >= DISTANCE_BINS[-1]))
    dist_legend = (f"Open positions by how far their symbol's mark must move (up or down) to reach their "
                   f"liquidation price, bars weighted by notional ({q}; hover for the count). Not drawn: "
                   f"{fmt(far)} positions 50% or more away, and {fmt(int(((pos.qty != 0) & ~np.isfinite(liq)).sum()))} "
                   f"with no liquidation price (no move liquidates them).")
    tables = _top_accounts(book, acc, p, wallet_price, result)
    # totals per settlement asset
    pos_asset = inst.settle_asset[pos.symbol]
    n_assets = len(book.assets)
    totals = pl.DataFrame({
        "asset": book.assets,
        "wallets": np.bincount(book.wallets.asset, minlength=n_assets),
        "open_positions": np.bincount(pos_asset[pos.qty != 0], minlength=n_assets),
        "equity": np.bincount(book.wallets.asset, weights=np.nan_to_num(acc["equity"].to_numpy()), minlength=n_assets),
        "notional": np.bincount(pos_asset, weights=np.nan_to_num(p["notional"].to_numpy()), minlength=n_assets),
        "mm": np.bincount(pos_asset, weights=np.nan_to_num(p["mm"].to_numpy()), minlength=n_assets),
        "price": price}).with_columns(
        equity_q=pl.col("equity") * pl.col("price"), notional_q=pl.col("notional") * pl.col("price"),
        mm_q=pl.col("mm") * pl.col("price")).sort("notional_q", descending=True, nulls_last=True)
    grand = totals.select(pl.lit("all").alias("asset"), pl.col("wallets").sum(), pl.col("open_positions").sum(),
                          pl.lit(None, pl.Float64).alias("equity"), pl.lit(None, pl.Float64).alias("notional"),
                          pl.lit(None, pl.Float64).alias("mm"), pl.lit(None, pl.Float64).alias("price"),
                          pl.col("equity_q").sum(), pl.col("notional_q").sum(), pl.col("mm_q").sum())
    totals = pl.concat([totals, grand])
    tot = _table(totals, {"asset": "settlement asset", "wallets": "wallets", "open_positions": "open positions",
                          "equity": "equity (asset)", "notional": "notional (asset)", "mm": "maintenance margin (asset)",
                          "price": f"price ({q})", "equity_q": f"equity ({q})", "notional_q": f"notional ({q})",
                          "mm_q": f"maintenance margin ({q})"},
                 f"Totals per settlement asset, converted to {q} at the marks (last row: all assets)", "totals")
    return ('<section id="risk"><h2>Risk distribution and concentration</h2>'
            + _figure(fig, risk_legend, "fig-risk") + _figure(fig2, dist_legend, "fig-distance")
            + tot + tables + "</section>")


def _top_accounts(book: Book, acc: pl.DataFrame, p: pl.DataFrame, wallet_price: np.ndarray,
                  result: StressResult) -> str:
    """Top accounts by maintenance margin, notional and potential deficit: per-account sums
    over the account's wallets (wallets are sorted by account: segments), in the quote."""
    q = result.quote
    account = book.wallets.account_id
    if not len(account):
        return ""
    starts = np.flatnonzero(np.r_[True, account[1:] != account[:-1]])
    ids = account[starts]
    pos = book.positions

    def per_account(per_wallet):
        return np.add.reduceat(np.nan_to_num(per_wallet * wallet_price), starts)
    n_w = len(account)
    figures = {
        "equity": per_account(acc["equity"].to_numpy()),
        "mm": per_account(np.bincount(pos.wallet, weights=np.nan_to_num(p["mm"].to_numpy()), minlength=n_w)),
        "notional": per_account(np.bincount(pos.wallet, weights=np.nan_to_num(p["notional"].to_numpy()),
                                            minlength=n_w)),
        "worst_risk_ratio": np.fmax.reduceat(acc["risk_ratio"].to_numpy(), starts)}
    # potential deficit: an account's deficit in a scenario (all its wallets), the largest over the scenarios
    per_scenario = result.deficits.group_by("scenario", "account_id").agg(pl.col("deficit").sum())
    worst = per_scenario.sort("deficit", "scenario", descending=[True, False]).unique("account_id", keep="first")
    deficit, scenario = np.zeros(len(ids)), np.full(len(ids), None, dtype=object)
    at = np.searchsorted(ids, worst["account_id"].to_numpy())
    deficit[at], scenario[at] = worst["deficit"].to_numpy(), worst["scenario"].to_list()
    figures["deficit"] = deficit
    picked = {by: np.argsort(-figures[by], kind="stable")[:TOP_ACCOUNTS] for by in ("mm", "notional", "deficit")}
    picked["deficit"] = picked["deficit"][deficit[picked["deficit"]] > 0]
    cols = {"account_id": "account", "assets": "assets", "equity": f"equity ({q})", "mm": f"maintenance margin ({q})",
            "notional": f"notional ({q})", "worst_risk_ratio": "worst risk ratio",
            "deficit": f"potential deficit ({q})", "worst_scenario": "in scenario"}
    bounds = np.r_[starts, n_w]
    html_tables = []
    for by, label in (("mm", "maintenance margin (all positions, cross and isolated)"), ("notional", "notional"),
                      ("deficit", "potential deficit: the largest deficit at bankruptcy over the stress scenarios, "
                                  "all of the account's wallets")):
        k = picked[by]
        frame = pl.DataFrame({
            "account_id": [str(i) for i in ids[k]],   # an id, not a number to group by thousands
            "assets": [",".join(sorted(book.assets[a] for a in book.wallets.asset[bounds[j]:bounds[j + 1]])) for j in k],
            **{name: values[k] for name, values in figures.items()},
            "worst_scenario": pl.Series(scenario[k].tolist(), dtype=pl.String)})
        frame = frame.with_columns(pl.col("worst_risk_ratio").round(4))
        html_tables.append(_table(frame, cols, f"Top {TOP_ACCOUNTS} accounts by {label}", f"top-{by}"))
    return "".join(html_tables)


# -- the page ---------------------------------------------------------------------------
def _header(book: Book, base, quote: str, fund, version: str) -> str:
    acc = base.accounts
    n_liq = int(acc["liquidate"].sum())
    iso = int(base.positions.filter(pl.col("liquidate") & (pl.col("margin_mode") == "isolated")).height)
    fund_text = ("empty (every deficit goes to auto-deleveraging)" if fund is None else
                 ", ".join(f"{fmt(float(b))} {a}" for a, b in zip(fund["asset"].cast(pl.String), fund["balance"])))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    facts = [("positions", fmt(len(book.positions))), ("wallets", fmt(len(book.wallets))),
             ("accounts", fmt(int(np.count_nonzero(np.diff(book.wallets.account_id)) + min(len(book.wallets), 1)))),
             ("symbols", fmt(len(book.instruments))), ("liquidatable now", f"{fmt(n_liq)} wallets, {fmt(iso)} isolated"),
             ("insurance fund", fund_text), ("amounts in", quote), ("written", f"{when} by riskcore {version}")]
    return "<dl class=facts>" + "".join(f"<dt>{k}</dt><dd>{html.escape(v)}</dd>" for k, v in facts) + "</dl>"


_CSS = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav a{margin-right:1.5em} .facts{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}
.facts dt{color:#666} .facts dd{margin:0} figure{margin:1.5em 0} figcaption{color:#444;font-size:.92em;
max-width:70em;line-height:1.4} table{border-collapse:collapse;margin:1.5em 0;font-size:.88em;width:100%}
caption{text-align:left;font-weight:600;padding:.4em 0} th,td{padding:.25em .6em;border-bottom:1px solid #eee}
th{background:#f5f5f5;cursor:pointer;user-select:none;text-align:left;position:sticky;top:0}
th.asc::after{content:" ▲"} th.desc::after{content:" ▼"} td.n{text-align:right;font-variant-numeric:tabular-nums}
tr:hover td{background:#fafaf0}
"""

_SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var desc = !th.classList.contains("desc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(desc ? "desc" : "asc");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var td = row.cells[col], v = td.getAttribute("data-v");
        return v === null ? td.textContent : (v === "" ? NaN : parseFloat(v));
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x === "number" && typeof y === "number") {
          if (isNaN(x)) return 1; if (isNaN(y)) return -1;
          return desc ? y - x : x - y;
        }
        return desc ? String(y).localeCompare(String(x)) : String(x).localeCompare(String(y));
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _page(title: str, header: str, sections: list[str]) -> str:
    from plotly.offline import get_plotlyjs
    nav = ('<nav><a href="#stress">Stress scenarios</a><a href="#map">Liquidation map</a>'
           '<a href="#risk">Risk distribution and concentration</a></nav>')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="generator" content="{GENERATOR}"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style><script>{get_plotlyjs()}</script></head><body>"
            f"<h1>{html.escape(title)}</h1>{header}{nav}{''.join(sections)}"
            f"<script>{_SORT_JS}</script></body></html>")


def write_report(book, out, *, marks=None, insurance_fund=None, coins: int = 3, force: bool = False,
                 inputs=(), progress: Callable[[str], None] | None = None) -> Report:
    """Build the report and write `out` (the page) and its `.scenarios.parquet` beside it,
    each whole (output.write_files)."""
    from .output import check_files, write_files
    out = Path(out)
    check_files([out, scenarios_path(out)], command="report", inputs=inputs, force=force, marker=GENERATOR)
    report = build_report(book, marks, insurance_fund=insurance_fund, coins=coins, progress=progress)
    write_files({out: report.html.encode(), scenarios_path(out): _parquet_bytes(report.stress.scenarios)},
                command="report", inputs=inputs, force=force, marker=GENERATOR)
    return report


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    """The scenario table as a Parquet file whose metadata says riskcore wrote it."""
    import io

    import pyarrow.parquet as pq
    table = frame.to_arrow()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"generator": GENERATOR.encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


