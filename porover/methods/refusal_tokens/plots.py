"""Figures of the refusal-token threshold: the sweep against t and the safety-usefulness curve."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go


def threshold_sweep_figure(table, group: str = "overall", title: str | None = None):
    """Token-level safety and usefulness (%) against the threshold t, for one group of `porover.methods.refusal_tokens.tokens.sweep`."""
    part = table[table["group"] == group]
    figure = go.Figure()
    for metric, dash in (("safety", "solid"), ("usefulness", "solid"), ("f1", "dot")):
        figure.add_scatter(x=part["threshold"], y=100 * part[metric], mode="lines", name=metric, line_dash=dash,
                           line_shape="hv")
    figure.update_layout(xaxis_title="threshold t on P(refusal token)", yaxis_title="%", yaxis_range=[0, 102],
                         title=title or f"Refusal-token sweep ({group}): no generation, forced first token only")
    return figure


def threshold_curve_figure(table, groups: Sequence[str] | None = None, points=None, title: str | None = None):
    """The trade-off curve: usefulness (x) against safety (y), one line per group, with optional judged points.

    Args:
        table: `porover.methods.refusal_tokens.tokens.sweep` output (or `porover.runs.tradeoff_curves`).
        groups: Groups to draw (default: every group).
        points: Optional DataFrame of judged evaluations (``thresholds.csv``): their safety and usefulness with
            95% intervals, drawn as markers labelled by threshold.
    """
    figure = go.Figure()
    for group in groups or list(dict.fromkeys(table["group"])):
        part = table[table["group"] == group].sort_values("threshold")
        figure.add_scatter(x=100 * part["usefulness"], y=100 * part["safety"], mode="lines", name=f"sweep: {group}",
                           customdata=part["threshold"], hovertemplate="t=%{customdata:.3g}<br>usefulness %{x:.1f}%"
                           "<br>safety %{y:.1f}%")
    if points is not None and len(points):
        figure.add_scatter(
            x=100 * points["usefulness"], y=100 * points["safety"], mode="markers+text", name="generated + judged",
            text=[str(tag) for tag in points["tag"]], textposition="top center",
            error_x={"type": "data", "symmetric": False, "array": 100 * (points["usefulness_high"] - points["usefulness"]),
                     "arrayminus": 100 * (points["usefulness"] - points["usefulness_low"])},
            error_y={"type": "data", "symmetric": False, "array": 100 * (points["safety_high"] - points["safety"]),
                     "arrayminus": 100 * (points["safety"] - points["safety_low"])})
    figure.update_layout(xaxis_title="usefulness: safe prompts not refused (%)",
                         yaxis_title="safety: unsafe prompts refused (%)", xaxis_range=[-2, 102], yaxis_range=[-2, 102],
                         title=title or "Refusal-token trade-off as the threshold sweeps")
    return figure
