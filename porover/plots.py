"""Plotly figures for the stage notebooks."""

from __future__ import annotations

import html

import plotly.graph_objects as go
import plotly.io as pio

from porover.metrics import metrics_table

# Live figures in JupyterLab, plus plotly.js inlined once per notebook so HTML exports open offline.
NOTEBOOK_RENDERER = "plotly_mimetype+notebook"
LABEL_POSITIONS = ("top center", "bottom right", "top left", "bottom center", "middle right")
RUN_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


def use_notebook_renderer() -> None:
    """Show figures in JupyterLab and keep them in HTML exports; call once in a notebook (not at import)."""
    pio.renderers.default = NOTEBOOK_RENDERER


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


def candidates_per_prompt_figure(candidates: list[dict]) -> go.Figure:
    """Histogram of how many completions each prompt has, general and toxic prompts apart."""
    counts: dict[tuple, list] = {}
    for c in candidates:
        counts.setdefault((c["kind"], c["source"], c["id"]), []).append(c)
    figure = go.Figure()
    for kind in ("general", "toxic"):
        figure.add_histogram(x=[len(v) for (k, _, _), v in counts.items() if k == kind], name=kind)
    figure.update_layout(barmode="group", xaxis_title="completions per prompt", yaxis_title="prompts",
                         title="Completions per prompt", xaxis_dtick=1)
    return figure


def length_figure(candidates: list[dict], selected: list[dict]) -> go.Figure:
    """Words per completion: every candidate against the selected ones, per kind of prompt."""
    figure = go.Figure()
    for name, rows, text in (("candidates", candidates, lambda r: r["response"]),
                             ("selected", selected, lambda r: r["messages"][-1]["content"])):
        figure.add_box(x=[r["kind"] for r in rows], y=[len(text(r).split()) for r in rows], name=name, boxmean=True)
    figure.update_layout(boxmode="group", yaxis_title="words", title="Completion lengths")
    return figure


def agreement_figure(agreement: dict[str, float]) -> go.Figure:
    """Share (%) of prompts where each criterion picks the same completion as random selection."""
    agreement = {name: share for name, share in agreement.items() if share is not None}  # None: no prompt to compare
    figure = go.Figure(go.Bar(x=list(agreement), y=[100 * v for v in agreement.values()],
                              hovertemplate="%{y:.1f}%"))
    figure.update_layout(yaxis_title="% of prompts (with 2+ candidates)", yaxis_range=[0, 105],
                         title="How often each criterion agrees with random selection")
    return figure


def refusal_share_figure(candidates: list[dict]) -> go.Figure:
    """Refusal classes (%) among the candidates, per kind of prompt; None = unparseable."""
    classes = ("full_compliance", "partial_refusal", "full_refusal", None)
    figure = go.Figure()
    for label in classes:
        shares = []
        for kind in ("general", "toxic"):
            labels = [c["scores"]["refusal"] for c in candidates if c["kind"] == kind]
            shares.append(100 * labels.count(label) / len(labels) if labels else 0)
        figure.add_bar(x=["general", "toxic"], y=shares, name=label or "unparseable")
    figure.update_layout(barmode="stack", yaxis_title="% of candidates", title="Refusals among the candidates")
    return figure


def funnel_figure(funnel: dict[str, int], title: str = "POROver filter funnel: prompts passing each filter") -> go.Figure:
    """How many prompts pass each filter of the preference-data stage, in order."""
    figure = go.Figure(go.Funnel(y=list(funnel), x=list(funnel.values()), textinfo="value+percent initial"))
    figure.update_layout(title=title)
    return figure


def prompt_refusal_share_figure(prompts: list[dict], containment_threshold: float) -> go.Figure:
    """Histogram of the student's refusal share per prompt, with the containment threshold τ marked."""
    shares = [p["share"] for p in prompts if p.get("share") is not None]
    figure = go.Figure(go.Histogram(x=shares, xbins={"start": -0.05, "end": 1.05, "size": 0.05}))
    figure.add_vline(x=containment_threshold, line_dash="dash", line_color="red",
                     annotation_text=f"τ = {containment_threshold}")
    figure.update_layout(xaxis_title="share of refusals among the student's parsed samples", yaxis_title="prompts",
                         xaxis_range=[-0.05, 1.05], title="Student refusal share per prompt (candidates: share ≥ τ)")
    return figure


def ches_figure(pairs: list[dict], score: str = "ches_normalized", quantile: float | None = None) -> go.Figure:
    """Distribution of a pair score (CHES) per kind of pair, with the kept-quantile cut-off of each kind."""
    import numpy as np

    figure = go.Figure()
    for kind in dict.fromkeys(p["kind"] for p in pairs):
        values = [p[score] for p in pairs if p["kind"] == kind and p.get(score) is not None]
        figure.add_histogram(x=values, name=kind, opacity=0.7)
        if quantile is not None and values:
            figure.add_vline(x=float(np.quantile(values, quantile)), line_dash="dash",
                             annotation_text=f"{kind}: q{quantile:g}")
    figure.update_layout(barmode="overlay", xaxis_title=score, yaxis_title="pairs",
                         title=f"{score} per pair under the student (lower: less likelihood displacement)")
    return figure


def loss_figure(log_history: list[dict], title: str = "Training loss") -> go.Figure:
    """Training loss (and learning rate, right axis) per optimizer step, from a trainer's ``log_history``."""
    logged = [h for h in log_history if "loss" in h]
    figure = go.Figure()
    figure.add_scatter(x=[h["step"] for h in logged], y=[h["loss"] for h in logged], mode="lines+markers", name="loss")
    figure.add_scatter(x=[h["step"] for h in logged], y=[h.get("learning_rate") for h in logged], mode="lines",
                       name="learning rate", yaxis="y2", line_dash="dot")
    figure.update_layout(xaxis_title="step", yaxis_title="loss", title=title,
                         yaxis2={"title": "learning rate", "overlaying": "y", "side": "right", "showgrid": False})
    return figure


def preference_figure(log_history: list[dict], title: str = "Preference optimization over training") -> go.Figure:
    """Implicit rewards and margins (left) and the chosen / rejected log-probabilities (right) per step.

    Chosen log-probabilities that fall while the margin grows are likelihood displacement (Razin et al.).
    """
    from plotly.subplots import make_subplots

    logged = [h for h in log_history if "rewards/margins" in h or "rewards/chosen" in h]
    steps = [h["step"] for h in logged]
    figure = make_subplots(rows=1, cols=2, subplot_titles=("implicit rewards β·log(π/π_ref)", "log-probabilities"))
    for col, keys in ((1, ("rewards/chosen", "rewards/rejected", "rewards/margins")), (2, ("logps/chosen", "logps/rejected"))):
        for key in keys:
            if any(key in h for h in logged):
                figure.add_scatter(x=steps, y=[h.get(key) for h in logged], mode="lines+markers", name=key, row=1, col=col)
    figure.update_xaxes(title_text="step")
    figure.update_layout(title=title)
    return figure


def _f1_curve(level: float) -> tuple[list[float], list[float]]:
    """Points (usefulness, safety) in % where F1 equals ``level`` %: S = F·U / (2U − F)."""
    xs = [level / 2 + (100 - level / 2) * i / 60 for i in range(1, 61)]
    points = [(u, level * u / (2 * u - level)) for u in xs if 2 * u - level > 0]
    points = [(u, s) for u, s in points if s <= 100.5]
    return [u for u, _ in points], [s for _, s in points]


def tradeoff_figure(tables: dict, f1_levels: tuple[float, ...] = (40, 60, 80, 90),
                    parents: dict[str, dict[str, str | None]] | None = None) -> go.Figure:
    """Usefulness against safety per stage, one trace per run: 95% intervals on both axes, F1 iso-curves,
    and an arrow from each arm to the arm it was trained from. The top right is best.

    Args:
        tables: ``{run label: stage table}`` with the columns of `porover.stages.analysis.stage_metrics`
            (rows with ``group == "overall"`` are drawn).
        f1_levels: F1 values (%) to draw as dotted iso-curves.
        parents: ``{run label: {evaluation stage: the evaluation of the model it was trained from}}``
            (`porover.arms.parent_map`); arrows go from parent to child (none for a run not given).
    """
    figure = go.Figure()
    for level in f1_levels:
        xs, ys = _f1_curve(level)
        figure.add_scatter(x=xs, y=ys, mode="lines", line={"dash": "dot", "width": 1, "color": "#bbbbbb"},
                           hoverinfo="skip", showlegend=False)
        figure.add_annotation(x=xs[-1], y=ys[-1], text=f"F1 {level:g}", showarrow=False, xanchor="right",
                              yanchor="bottom", font={"size": 10, "color": "#888888"})
    for number, (run, table) in enumerate(tables.items()):
        rows = table[table["group"] == "overall"].reset_index(drop=True)
        color = RUN_COLORS[number % len(RUN_COLORS)]
        # Plotly reads a subset of HTML in text: stage and run names are escaped so they stay text.
        labels = [html.escape(str(stage)) for stage in rows["stage"]]
        figure.add_scatter(
            x=rows["usefulness"], y=rows["safety"], mode="markers+text", name=html.escape(str(run)),
            # alternating label positions keep stages that land close together readable
            text=labels, textposition=[LABEL_POSITIONS[i % len(LABEL_POSITIONS)] for i in range(len(labels))],
            marker={"color": color, "size": 9},
            error_x={"type": "data", "array": rows["usefulness_high"] - rows["usefulness"],
                     "arrayminus": rows["usefulness"] - rows["usefulness_low"], "thickness": 1},
            error_y={"type": "data", "array": rows["safety_high"] - rows["safety"],
                     "arrayminus": rows["safety"] - rows["safety_low"], "thickness": 1},
            customdata=rows[["f1"]].to_numpy(),
            hovertemplate="%{text}: usefulness %{x:.1f}%, safety %{y:.1f}%, F1 %{customdata[0]:.1f}%")
        where = {stage: i for i, stage in enumerate(rows["stage"])}
        lineage = (parents or {}).get(run, {})
        for end, stage in enumerate(rows["stage"]):
            start = where.get(lineage.get(stage))
            if start is None:
                continue
            figure.add_annotation(x=rows.at[end, "usefulness"], y=rows.at[end, "safety"],
                                  ax=rows.at[start, "usefulness"], ay=rows.at[start, "safety"],
                                  xref="x", yref="y", axref="x", ayref="y", showarrow=True, arrowhead=3,
                                  arrowsize=1.2, arrowwidth=1.5, arrowcolor=color, opacity=0.7, standoff=6)
    figure.update_layout(xaxis_title="usefulness (% of safe prompts not refused)", xaxis_range=[0, 102],
                         yaxis_title="safety (% of unsafe prompts refused)", yaxis_range=[0, 102],
                         title="Safety against usefulness per arm (95% intervals; arrows: from the arm each was trained from)")
    return figure


PREFERENCE_PANELS = (("rewards/margins", "reward margin (chosen − rejected)"),
                     ("logps/chosen", "log-probability of the chosen"), ("logps/rejected", "log-probability of the rejected"))


def training_figure(logs: dict[str, list[dict]]) -> go.Figure:
    """Training loss per step of every training stage, one line each (``{stage: log_history}``); beside it, for
    DPO-family stages (TRL logs ``rewards/margins``, ``logps/chosen`` and ``logps/rejected``), the reward margin and
    the chosen and rejected log-probabilities: a margin that grows while the chosen log-probability falls is
    likelihood displacement."""
    from plotly.colors import DEFAULT_PLOTLY_COLORS
    from plotly.subplots import make_subplots

    preference = [stage for stage, history in logs.items() if any("rewards/margins" in h for h in history)]
    panels = [("loss", "training loss")] + (list(PREFERENCE_PANELS) if preference else [])
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=[title for _, title in panels])
    for number, (stage, history) in enumerate(logs.items()):
        color = DEFAULT_PLOTLY_COLORS[number % len(DEFAULT_PLOTLY_COLORS)]
        for col, (key, _) in enumerate(panels, start=1):
            logged = [h for h in history if key in h and "loss" in h]  # training steps (not the final summary)
            if logged:
                figure.add_scatter(x=[h["step"] for h in logged], y=[h[key] for h in logged], mode="lines+markers",
                                   name=html.escape(stage), legendgroup=stage, showlegend=col == 1,
                                   line={"color": color}, row=1, col=col)
    figure.update_xaxes(title_text="step")
    figure.update_layout(title="Training curves")
    return figure
