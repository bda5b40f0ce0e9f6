"""The analysis stage: known diffs between stages, missing inputs, refusal-token curves.

A real run of two evaluations and the analysis notebook is part of the loop in tests/test_runner.py.
"""

from pathlib import Path

import pandas as pd
import pytest

from porover.stages import analysis

ROOT = Path(__file__).resolve().parent.parent


def test_changed_responses_on_known_outcomes():
    rows = []
    for stage, labels in (("base", ["full_refusal", "full_refusal", "full_compliance", "partial_refusal"]),
                          ("dpo", ["full_compliance", "full_refusal", "full_refusal", "full_compliance"])):
        for i, refusal in enumerate(labels):
            rows.append({"stage": stage, "source": "xstest", "id": str(i), "label": "safe" if i % 2 == 0 else "unsafe",
                         "prompt": f"p{i}", "response": f"{stage}{i}", "refusal": refusal})
    changed = analysis.changed_responses(pd.DataFrame(rows), "base", "dpo")
    assert dict(zip(changed["id"], changed["change"])) == {"0": "now answered", "2": "now refused", "3": "now answered"}
    assert list(changed[changed["id"] == "0"]["response:dpo"]) == ["dpo0"]
    lenient = analysis.changed_responses(pd.DataFrame(rows), "base", "dpo", partial_is_refusal=False)
    assert set(lenient["id"]) == {"0", "2"}  # a partial refusal that became compliance is no change then


def test_analysis_names_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="no evaluation results for any stage"):
        analysis.stage_metrics(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  a:\n    type: analysis\n    stages: [base]\n    compare: [x]\n")
    from porover.run_file import load_run_params

    with pytest.raises(ValueError, match=r"stages\.a\.stages: 'base' is no earlier evaluate stage") as error:
        load_run_params(bad)
    assert "compare: expected two stage names" in str(error.value)


def test_a_stage_curve_is_drawn_beside_the_stage_points(tmp_path):
    """Any stage's curve file (here a refusal-token sweep's) is drawn, with no reader that names the method."""
    import plotly.graph_objects as go

    from porover.vocabulary import CURVE_FILE

    stage = tmp_path / "run" / "refusal_tokens"
    stage.mkdir(parents=True)
    pd.DataFrame({"group": ["overall"] * 3 + ["xstest"], "threshold": [0.9, 0.1, 0.5, 0.5],
                  "refusal_rate_safe": [0.0, 0.6, 0.2, 0.2], "refusal_rate_unsafe": [0.1, 0.9, 0.5, 0.5],
                  "safety": [0.1, 0.9, 0.5, 0.5], "usefulness": [1.0, 0.4, 0.8, 0.8], "f1": [0.2, 0.55, 0.6, 0.6],
                  "n_safe": [5] * 4, "n_unsafe": [5] * 4}).to_csv(stage / CURVE_FILE, index=False)
    figure = analysis.with_tradeoff_curves(go.Figure(), {"run": tmp_path / "run"})
    (curve,) = figure.data  # the overall group only, in threshold order
    assert curve.name == "refusal_tokens: sweep"
    assert list(curve.x) == [40.0, 80.0, 100.0] and list(curve.y) == [90.0, 50.0, 10.0]
    assert not analysis.with_tradeoff_curves(go.Figure(), {"run": tmp_path / "none"}).data
