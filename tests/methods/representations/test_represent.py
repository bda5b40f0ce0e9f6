"""Representation analysis: probes on known sets, group comparisons, and the stage on the real tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from porover.methods.representations.probes import (boundary_position, compare_groups, cross_fitted_logits, fit_probe,
                                                    pca)
from porover.store import write_jsonl

ROOT = Path(__file__).resolve().parents[3]


def test_pca_components_are_orthonormal_and_ordered():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) * np.array([5, 3, 1, 0.5, 0.2, 0.1])
    coords, components, explained = pca(x, 3)
    np.testing.assert_allclose(components @ components.T, np.eye(3), atol=1e-10)
    assert coords.shape == (200, 3) and explained[0] > explained[1] > explained[2]
    assert abs(abs(components[0, 0]) - 1) < 0.05  # the widest axis is found


def test_probe_accuracies_on_a_separable_and_a_random_set():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 10))
    y = (x[:, 3] > 0).astype(int)
    x[:, 3] += np.where(y == 1, 1.0, -1.0)  # a margin along dimension 3
    logits, accuracy, extra = cross_fitted_logits(x, y, folds=5, seed=0, extra=x[:7])
    assert accuracy == 1.0 and ((logits > 0) == (y == 1)).all() and extra.shape == (7,)
    assert abs(fit_probe(x, y).direction()[3]) > 0.9
    noise = rng.integers(0, 2, size=120)
    assert cross_fitted_logits(x, noise, folds=5, seed=0)[1] < 0.7  # labels unrelated to x: near chance
    with pytest.raises(ValueError, match="both classes"):
        fit_probe(x, np.zeros(120))


def test_boundary_position_and_group_comparison():
    low, high = np.zeros((5, 2)), np.tile([2.0, 0.0], (5, 1))
    np.testing.assert_allclose(boundary_position(np.array([[0.0, 1], [1, 5], [2, 0]]), low, high), [0, 0.5, 1])
    rng = np.random.default_rng(2)
    shifted = compare_groups(rng.normal(1, 0.3, 40), rng.normal(0, 0.3, 50), bootstrap_samples=200)
    assert shifted["difference"] > 0.7 and shifted["interval"][0] > 0.5 and shifted["auc"] > 0.95
    assert shifted["p_value"] < 1e-6
    same = compare_groups(rng.normal(0, 1, 40), rng.normal(0, 1, 40), bootstrap_samples=200)
    assert same["interval"][0] < 0 < same["interval"][1]
    assert compare_groups(np.array([]), np.array([1.0]))["difference"] is None


def fake_evaluation(folder, model="smollm2-135m-instruct"):
    """An evaluation's files: safe prompts half refused (the over-refusals), unsafe ones refused."""
    from porover.data import load_rows

    safe = load_rows("xstest", n=24, seed=0)
    rows = [{**r, "response": "x", "refusal": ("full_refusal" if i % 2 or r["label"] == "unsafe" else "full_compliance")}
            for i, r in enumerate(safe)]
    rows.append({**rows[0], "id": "unlabelled", "label": None})  # neither class: left out
    folder.mkdir(parents=True)
    write_jsonl(folder / "responses.jsonl", rows)
    (folder / "metrics.json").write_text(json.dumps({"model": model}))
    return folder / "responses.jsonl"


def test_represent_stage_on_the_tiny_model_resumes_per_model(tmp_path, monkeypatch):
    from porover.methods.representations import stage as represent

    responses = fake_evaluation(tmp_path / "run" / "evaluate_base")
    params, errors = represent.RepresentParams.validate(
        {"evaluations": {str(responses): None, str(responses.parent.parent / "nothing.jsonl"): "x"},
         "benign": {"alpaca": 12}, "malicious": {"advbench": 4}, "layers": [8, -1], "folds": 3, "batch_size": 8,
         "bootstrap_samples": 50, "run_dir": str(tmp_path / "run"), "device": "cpu"}, "test")
    assert errors == ["test.evaluations." + str(responses.parent.parent / "nothing.jsonl")
                      + ": expected stage:NAME of an evaluate stage or a responses.jsonl with its metrics.json beside it"]
    params.evaluations = {str(responses): None, str(fake_evaluation(tmp_path / "run" / "evaluate_sft")): "sft"}
    loads = []
    original = represent.model_states.__globals__["digest_of"]

    def interrupt_second(*args, **kwargs):
        loads.append(1)
        if len(loads) == 2:
            raise KeyboardInterrupt  # killed while reading the second model
        return original(*args, **kwargs)

    monkeypatch.setattr(represent, "digest_of", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        represent.run_represent(params)
    monkeypatch.setattr(represent, "digest_of", original)
    assert len(list((params.stage_dir / "states").glob("*.npz"))) == 1
    import porover.models

    calls = []
    real_load = porover.models.load_model
    monkeypatch.setattr(porover.models, "load_model", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    summary, points = represent.run_represent(params)
    assert calls == []  # both models are the same weights: the stored states serve the second too
    assert list(summary) == ["evaluate_base", "sft"]
    found = summary["sft"]["layers"]["-1"]
    assert found["n"] == {"benign": 12, "pseudo_malicious": 12, "malicious": 16}
    assert 0 <= found["harm_probe_accuracy"] <= 1 and 0 <= found["refusal_probe_accuracy"] <= 1
    assert found["position_means"]["benign"] == pytest.approx(0, abs=1e-6)
    assert found["position_means"]["malicious"] == pytest.approx(1, abs=1e-6)
    test = found["mosr"]["harm_position"]
    assert (test["n_a"], test["n_b"]) == (6, 6) and test["interval"][0] <= test["difference"] <= test["interval"][1]
    assert len(points) == 2 * 2 * 40 and {p["verdict"] for p in points} == {"refused", "answered", "no verdict"}
    table = represent.findings_table(summary)
    assert list(table["model"]) == ["evaluate_base", "evaluate_base", "sft", "sft"]
    next(p for p in points if p["layer"] == -1)["prompt"] = "<script>alert(1)</script>"
    for figure in (represent.scatter_figure(points, -1, color="verdict"), represent.position_figure(points, -1)):
        hover = " ".join(text for trace in figure.data for text in trace.hovertext)
        assert "<script>" not in hover and "&lt;script&gt;" in hover


def _run(tmp_path, extra: str):
    from porover.runner import run_pipeline

    run_file = tmp_path / "rep.yaml"
    run_file.write_text("run_name: rep\ndevice: cpu\nstages:\n  base:\n    type: evaluate\n"
                        "    benchmarks: {xstest: 6}\n    judges: [phrase_lr]\n    max_new_tokens: 8\n"
                        "    bootstrap_samples: 20\n" + extra)
    manifest = run_pipeline(str(run_file), outputs=str(tmp_path))
    assert all(s["status"] == "finished" for s in manifest["stages"].values()), manifest["stages"]
    return tmp_path / "rep"


def test_represent_notebook_runs_under_papermill(tmp_path):
    import papermill

    from porover.methods.representations.stage import NOTEBOOK

    responses = fake_evaluation(tmp_path / "run" / "evaluate_base")
    papermill.execute_notebook(str(ROOT / "notebooks" / NOTEBOOK), str(tmp_path / "represent.ipynb"), cwd=str(ROOT),
                               kernel_name="python3", progress_bar=False,
                               parameters={"evaluations": {str(responses): "base"}, "benign": {"alpaca": 6},
                                           "layers": [30], "folds": 3, "bootstrap_samples": 20, "device": "cpu",
                                           "run_dir": str(tmp_path / "run")})
    summary = json.loads((tmp_path / "run" / "represent" / "summary.json").read_text())
    assert summary["base"]["layers"]["30"]["n"] == {"benign": 6, "pseudo_malicious": 12, "malicious": 12}


@pytest.mark.slow
def test_mosr_arm_trains_evaluates_and_is_analysed(tmp_path):
    run_dir = _run(tmp_path, "  mosr:\n    type: mosr\n    benign: {alpaca: 4}\n    pseudo_malicious: {oktest:train: 4}\n"
                             "    malicious: {advbench: 4}\n    max_steps: 2\n    max_length: 64\n"
                             "  evaluate_mosr:\n    type: evaluate\n    model: stage:mosr\n    benchmarks: {xstest: 6}\n"
                             "    judges: [phrase_lr]\n    max_new_tokens: 8\n    bootstrap_samples: 20\n"
                             "  represent:\n    type: represent\n    evaluations: {stage:base: base, stage:evaluate_mosr: mosr}\n"
                             "    benign: {alpaca: 6}\n    layers: [30]\n    bootstrap_samples: 20\n"
                             "  analysis:\n    type: analysis\n")
    summary = json.loads((run_dir / "represent" / "summary.json").read_text())
    assert list(summary) == ["base", "mosr"] and summary["mosr"]["model"].endswith("mosr/model")
    import pandas as pd

    table = pd.read_csv(run_dir / "analysis" / "stage_metrics.csv")
    assert "evaluate_mosr" in set(table["stage"])
