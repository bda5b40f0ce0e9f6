"""Plotly figures for the stage notebooks."""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio

from porover.metrics import metrics_table

# Figures carry plotly.js inline, so executed notebooks and their HTML exports open offline.
pio.renderers.default = "plotly_mimetype+notebook"

METRIC_COLORS = {"safety": "#1f77b4", "usefulness": "#2ca02c", "f1": "#9467bd"}


def metrics_figure(metrics: dict, level: str = "by_benchmark", title: str | None = None) -> go.Figure:
    """Grouped bars of safety, usefulness and F1 (%) per group, with 95% bootstrap intervals.

    Args:
        metrics: Output of `porover.compute_metrics`.
        level: ``"overall"``, ``"by_benchmark"`` or ``"by_category"``.
        title: Figure title.
    """
    table = metrics_table(metrics, level)
    figure = go.Figure()
    for metric, color in METRIC_COLORS.items():
        values = table[metric].fillna(0)
        upper = (table[f"{metric}_high"] - table[metric]).fillna(0)
        lower = (table[metric] - table[f"{metric}_low"]).fillna(0)
        figure.add_bar(x=table["group"], y=values, name=metric, marker_color=color,
                       error_y={"type": "data", "array": upper, "arrayminus": lower},
                       customdata=table[f"{metric}_n"], hovertemplate="%{y:.1f}% (n=%{customdata})")
    figure.update_layout(barmode="group", yaxis_title="%", yaxis_range=[0, 105],
                         title=title or f"Safety, usefulness and F1 {level.replace('_', ' ')}")
    return figure
