"""Figures of a direction's per-layer scores and of the coefficient curve (both stages draw them)."""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

SCORE_TITLES = {"bypass": "refusal score with the direction ablated (held-out refused prompts)",
                "induce": "refusal score with the vector added (held-out harmless prompts)",
                "kl": "KL divergence with the direction ablated (held-out harmless prompts)"}


def layer_scores_figure(rows: Sequence[dict], chosen: dict, baselines: dict[str, float], token_labels: Sequence[str],
                        criteria=None, title: str = "Candidate directions per layer") -> go.Figure:
    """One panel per score (`porover.methods.refusal_direction.selection`), one line per post-instruction position,
    the baseline dashed, the chosen candidate circled, the KL threshold dotted.

    Args:
        rows: Scored candidates (``position``, ``layer``, ``bypass``, ``kl``, ``induce``).
        chosen: The chosen row.
        baselines: ``{"bypass": ..., "induce": ...}``: the mean refusal scores without intervention.
        token_labels: The post-instruction tokens, last ``positions`` of them (shown escaped).
        criteria: The `Criteria` used (its KL threshold is drawn).
    """
    kinds = [kind for kind in SCORE_TITLES if any(row.get(kind) is not None for row in rows)]
    figure = make_subplots(rows=len(kinds), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                           subplot_titles=[SCORE_TITLES[kind] for kind in kinds])
    positions = sorted({row["position"] for row in rows})
    for panel, kind in enumerate(kinds, start=1):
        for position in positions:
            part = sorted((r for r in rows if r["position"] == position), key=lambda r: r["layer"])
            label = html.escape(repr(token_labels[position])) if -len(token_labels) <= position else str(position)
            figure.add_scatter(x=[r["layer"] for r in part], y=[r[kind] for r in part], mode="lines+markers",
                               name=f"position {position}: {label}", legendgroup=str(position), showlegend=panel == 1,
                               row=panel, col=1)
        figure.add_scatter(x=[chosen["layer"]], y=[chosen[kind]], mode="markers", name="chosen",
                           marker={"size": 14, "symbol": "circle-open", "color": "black"}, showlegend=panel == 1,
                           row=panel, col=1)
        if kind in baselines:
            figure.add_hline(y=baselines[kind], line_dash="dash", line_color="grey", row=panel, col=1)
        if kind == "kl" and criteria is not None and criteria.kl_threshold is not None:
            figure.add_hline(y=criteria.kl_threshold, line_dash="dot", line_color="red", row=panel, col=1)
    figure.update_xaxes(title_text="layer the direction is read at (input of block)", row=len(kinds), col=1)
    figure.update_layout(title=title, height=260 * len(kinds) + 80)
    return figure


def coefficient_figure(points: Sequence[dict], chosen: float | None, xaxis_title: str,
                       title: str = "Validation safety and usefulness per coefficient") -> go.Figure:
    """Safety, usefulness and F1 (%) on the validation prompts against the coefficient; the chosen one marked."""
    points = sorted(points, key=lambda p: p["threshold"])
    figure = go.Figure()
    for metric, dash in (("safety", "solid"), ("usefulness", "solid"), ("f1", "dot")):
        figure.add_scatter(x=[p["threshold"] for p in points],
                           y=[None if p[metric] is None else 100 * p[metric] for p in points],
                           mode="lines+markers", name=metric, line_dash=dash)
    if chosen is not None:
        figure.add_vline(x=chosen, line_dash="dash", line_color="black", annotation_text=f"chosen: {chosen:g}")
    figure.update_layout(xaxis_title=xaxis_title, yaxis_title="% (validation)", yaxis_range=[-2, 102], title=title)
    return figure


def tradeoff_curve_figure(points: Sequence[dict], extra: dict[str, dict] | None = None,
                          title: str = "Safety against usefulness on validation prompts") -> go.Figure:
    """Usefulness (x) against safety (y) along the coefficient, and single points (``extra``: name -> point)."""
    points = sorted(points, key=lambda p: p["threshold"])
    figure = go.Figure()
    figure.add_scatter(x=[100 * (p["usefulness"] or 0) for p in points], y=[100 * (p["safety"] or 0) for p in points],
                       mode="lines+markers+text", text=[f"{p['threshold']:g}" for p in points],
                       textposition="top center", name="coefficient curve")
    for name, point in (extra or {}).items():
        figure.add_scatter(x=[100 * (point["usefulness"] or 0)], y=[100 * (point["safety"] or 0)], mode="markers",
                           marker={"size": 12, "symbol": "diamond"}, name=html.escape(name))
    figure.update_layout(xaxis_title="usefulness: safe prompts not refused (%)",
                         yaxis_title="safety: unsafe prompts refused (%)", xaxis_range=[-2, 102], yaxis_range=[-2, 102],
                         title=title)
    return figure
