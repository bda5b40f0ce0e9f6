"""DRO's two analysis figures in plotly: queries in the first two PCA coordinates with the harmfulness boundary
(coloured by prompt condition) and with the refusal boundary (coloured by compliance), before and after the soft
prompt. They follow the authors' ``compare_pca_{harmfulness,refusal}_boundary.py`` and ``compare_pca_soft_*.py``:
circles harmless, crosses harmful, boundary ``w0 x + w1 y + b = 0`` from the first two of the four fold-averaged
weights, and the refusal direction drawn as an arrow along ``-w_r[:2]``."""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

COLOURS = {"none": "#1f77b4", "default": "#d62728", "short": "#2ca02c", "guardrail": "#9467bd", "dro": "#ff7f0e"}


def _hover(points: Sequence[dict]) -> list[str]:
    """Prompt and example response as escaped text: both are untrusted."""
    return [f"{html.escape(p['condition'])} · {'harmless' if p['harmless'] else 'harmful'} · compliance "
            f"{p['compliance']:.2f}<br>{html.escape(p['prompt'][:160])}<br>"
            f"<i>{html.escape(p['example_response'][:160])}</i>" for p in points]


def _boundary(figure: go.Figure, points: Sequence[dict], weight: Sequence[float], bias: float, name: str,
              dash: str, arrow: bool) -> None:
    """The line ``w0 x + w1 y + b = 0`` across the points' extent (solved for the steeper coordinate)."""
    xy = np.array([p["z"][:2] for p in points])
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    w0, w1 = weight[0], weight[1]
    if abs(w0) > abs(w1):
        ends = [((-bias - w1 * y) / w0, y) for y in (y0, y1)]
    else:
        ends = [(x, (-bias - w0 * x) / w1) for x in (x0, x1)]
    figure.add_trace(go.Scatter(x=[e[0] for e in ends], y=[e[1] for e in ends], mode="lines", name=name,
                                line={"color": "gray", "width": 3, "dash": dash}, hoverinfo="skip"))
    if arrow:
        direction = -np.array([w0, w1]) / (np.hypot(w0, w1) or 1.0)
        middle = np.mean(ends, axis=0)
        length = 0.2 * float(np.hypot(ends[1][0] - ends[0][0], ends[1][1] - ends[0][1]))
        tip = middle + direction * length / 2
        figure.add_annotation(x=tip[0], y=tip[1], ax=middle[0] - direction[0] * length / 2,
                              ay=middle[1] - direction[1] * length / 2, xref="x", yref="y", axref="x", ayref="y",
                              showarrow=True, arrowhead=2, arrowwidth=3, arrowcolor="gray",
                              hovertext="refusal direction (-w_r)")
    figure.update_xaxes(range=[x0 - 0.1 * (x1 - x0), x1 + 0.1 * (x1 - x0)])
    figure.update_yaxes(range=[y0 - 0.1 * (y1 - y0), y1 + 0.1 * (y1 - y0)], scaleanchor="x", scaleratio=1)


def boundary_figure(points: Sequence[dict], summary: dict, kind: str, conditions: Sequence[str],
                    title: str | None = None) -> go.Figure:
    """Queries of ``conditions`` in PCA coordinates 1-2 with one of DRO's boundaries.

    Args:
        points: ``points.jsonl`` rows (condition, harmless, z, compliance, prompt, example_response).
        summary: ``dro.json`` (the fold-averaged weights).
        kind: ``"harmfulness"`` (colour = condition, solid boundary) or ``"refusal"`` (colour = compliance score,
            dashed boundary and the refusal direction).
        conditions: Which conditions to draw (``dro`` is the learned soft prompt).
    """
    if kind not in ("harmfulness", "refusal"):
        raise ValueError(f"kind: expected 'harmfulness' or 'refusal', got {kind!r}")
    shown = [p for p in points if p["condition"] in conditions]
    figure = go.Figure()
    for condition in conditions:
        for harmless in (1, 0):
            group = [p for p in shown if p["condition"] == condition and p["harmless"] == harmless]
            if not group:
                continue
            marker = {"symbol": "circle" if harmless else "x", "size": 8, "opacity": 0.7}
            if kind == "harmfulness":
                marker["color"] = COLOURS.get(condition, "black")
            else:
                marker.update(color=[p["compliance"] for p in group], colorscale="Jet", reversescale=True, cmin=0,
                              cmax=1, colorbar={"title": "compliance"} if condition == conditions[0] else None,
                              showscale=condition == conditions[0] and harmless == 1,
                              line={"color": COLOURS.get(condition, "black"), "width": 1})
            figure.add_trace(go.Scatter(
                x=[p["z"][0] for p in group], y=[p["z"][1] for p in group], mode="markers", marker=marker,
                name=f"{html.escape(condition)} · {'harmless' if harmless else 'harmful'}",
                text=_hover(group), hovertemplate="%{text}<extra></extra>"))
    model = summary[f"{kind}_model"]
    _boundary(figure, shown, model["weight"], model["bias"], f"{kind} boundary",
              "solid" if kind == "harmfulness" else "dash", arrow=kind == "refusal")
    figure.update_layout(title=title or f"DRO {kind} boundary: {', '.join(conditions)}", xaxis_title="PC 1",
                         yaxis_title="PC 2", height=520, legend={"orientation": "h", "y": -0.15})
    return figure


def training_figure(log: Sequence[dict]) -> go.Figure:
    """The three loss terms per soft-prompt step."""
    figure = go.Figure()
    for term in ("loss", "refusal", "harmfulness", "norm"):
        figure.add_trace(go.Scatter(x=[r["step"] for r in log], y=[r[term] for r in log], name=term))
    figure.update_layout(title="DRO soft-prompt training", xaxis_title="step", yaxis_type="log", height=360)
    return figure
