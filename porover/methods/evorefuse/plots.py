"""Figures of the evolve stage's ``summary.json``: fitness over iterations, refusal rates, strategies."""

from __future__ import annotations

import plotly.graph_objects as go


def fitness_figure(summary: dict):
    """Mean fitness per iteration: the current instruction (fresh estimate), the best candidate, the accepted one."""
    rows = summary["by_iteration"]
    figure = go.Figure()
    for key, name in (("mean_current_fitness", "current x^i"), ("mean_best_candidate_fitness", "best candidate x'"),
                      ("mean_next_fitness", "after acceptance")):
        figure.add_scatter(x=[r["iteration"] for r in rows], y=[r[key] for r in rows], mode="lines+markers", name=name)
    figure.update_layout(title=f"Fitness over iterations ({summary['fitness']} form), mean over seeds",
                         xaxis_title="iteration", yaxis_title="fitness", xaxis_dtick=1)
    return figure


def refusal_rate_figure(summary: dict):
    """The target's refusal rate on the seeds and on the evolved prompts (greedy, no system prompt)."""
    rates = summary["refusal_rate"]
    labels = ["seeds (all)", "seeds with an evolved prompt", "evolved"]
    values = [rates["seeds_all"], rates["seeds_with_an_evolved_prompt"], rates["evolved"]]
    figure = go.Figure(go.Bar(x=labels, y=[None if v is None else 100 * v for v in values],
                              text=[None if v is None else f"{100 * v:.0f}%" for v in values]))
    figure.update_layout(title=f"Target refusal rate ({rates['judge']}): seeds vs evolved", yaxis_title="% refused",
                         yaxis_range=[0, 105])
    return figure


def strategy_figure(summary: dict):
    """Per strategy: candidates tried, safe, best of their iteration, accepted."""
    names = list(summary["per_strategy"])
    figure = go.Figure()
    for key in ("tried", "safe", "best_of_iteration", "accepted"):
        figure.add_bar(x=names, y=[summary["per_strategy"][n][key] for n in names], name=key)
    figure.update_layout(barmode="group", title="Candidates per strategy", yaxis_title="candidates")
    return figure
