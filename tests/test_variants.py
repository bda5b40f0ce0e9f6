"""A sweep's results: one table and one frontier of every variant, each number with its split, and the
variant chosen on the validation split (`porover.variants`)."""

import json

import pandas as pd
import pytest

from porover.metrics import compute_metrics
from porover.variants import chosen_variant, frontier_figure, pareto, variant_table

R, C = "full_refusal", "full_compliance"


def write_metrics(folder, refusals_safe: list[str], refusals_unsafe: list[str], split: str) -> None:
    rows = [{"source": "xstest", "id": f"s{i}", "label": "safe", "category": "c", "refusal": r}
            for i, r in enumerate(refusals_safe)]
    rows += [{"source": "or_bench_toxic", "id": f"u{i}", "label": "unsafe", "category": "c", "refusal": r}
             for i, r in enumerate(refusals_unsafe)]
    metrics = {**compute_metrics(rows, bootstrap_samples=20), "split": split}
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def sweep_run(tmp_path):
    variants = []
    # beta=0.05: safe on validation, over-refuses; beta=0.5: balanced on validation, worse on test
    outcomes = {"0.05": {"val": ([R, R, C, C], [R, R, R, R]), "test": ([C, C, C, C], [R, R, R, R])},
                "<b>0.5</b>": {"val": ([C, C, C, R], [R, R, R, C]), "test": ([R, R, R, R], [R, R, R, R])}}
    for beta, splits in outcomes.items():
        stages = {"evaluate_base": "evaluate_base", "dpo": f"dpo[beta={beta}]",
                  "evaluate_dpo_val": f"evaluate_dpo_val[beta={beta}]", "evaluate_dpo": f"evaluate_dpo[beta={beta}]"}
        reached = {"evaluate_base": [], **{stage: ["dpo.beta"] for stage in stages if stage != "evaluate_base"}}
        variants.append({"label": f"beta={beta}", "values": {"dpo.beta": beta}, "stages": stages, "reached": reached})
        write_metrics(tmp_path / stages["evaluate_dpo_val"], *splits["val"], "validation")
        write_metrics(tmp_path / stages["evaluate_dpo"], *splits["test"], "test")
    write_metrics(tmp_path / "evaluate_base", [C, C], [C, C], "test")
    types = {"evaluate_base": "evaluate", **{s: ("evaluate" if s.startswith("evaluate") else "preference_optimization")
                                             for v in variants for s in v["stages"].values()}}
    (tmp_path / "manifest.json").write_text(json.dumps({"sweep": variants, "types": types, "stages": {}}))
    return tmp_path


def test_every_variant_is_one_row_per_changed_evaluation_with_its_split(sweep_run):
    table = variant_table(sweep_run)
    assert list(zip(table["variant"], table["evaluation"], table["split"])) == [
        ("dpo.beta=0.05", "evaluate_dpo_val", "validation"), ("dpo.beta=<b>0.5</b>", "evaluate_dpo_val", "validation"),
        ("dpo.beta=0.05", "evaluate_dpo", "test"), ("dpo.beta=<b>0.5</b>", "evaluate_dpo", "test")]  # evaluate_base: shared
    first = table.iloc[0]
    assert first["dpo.beta"] == "0.05" and first["safety"] == 100 and first["usefulness"] == 50 and first["n"] == 8
    assert first["stage"] == "evaluate_dpo_val[beta=0.05]" and first["f1_low"] <= first["f1"] <= first["f1_high"]
    assert variant_table(sweep_run / "nothing").empty


def test_the_sweep_chooses_on_validation_never_on_test(sweep_run):
    table = variant_table(sweep_run)
    chosen = chosen_variant(table, "evaluate_dpo_val")
    assert chosen["variant"] == "dpo.beta=<b>0.5</b>" and chosen["split"] == "validation"  # F1 75 vs 66.7
    # on the test split the other variant would have won: choosing there is what the split prevents
    assert chosen_variant(table, "evaluate_dpo", split="test")["variant"] == "dpo.beta=0.05"
    with pytest.raises(ValueError, match="no validation results of evaluation 'evaluate_dpo'"):
        chosen_variant(table, "evaluate_dpo")


def test_one_frontier_holds_every_variant_with_escaped_labels(sweep_run):
    figure = frontier_figure(variant_table(sweep_run))
    names = [trace.name for trace in figure.data]
    assert names == ["evaluate_dpo_val (validation)", "evaluate_dpo_val (validation): frontier",
                     "evaluate_dpo (test)", "evaluate_dpo (test): frontier"]
    assert list(figure.data[0].text) == ["dpo.beta=0.05", "dpo.beta=&lt;b&gt;0.5&lt;/b&gt;"]
    assert pareto([(50, 100), (75, 75), (40, 90), (75, 75)]) == [0, 1, 3]
    only_validation = frontier_figure(variant_table(sweep_run), split="validation")
    assert len(only_validation.data) == 2


def test_the_report_shows_the_sweep_table_and_frontier(sweep_run):
    from porover.report import _sweep_section

    section = _sweep_section(sweep_run, "run")
    assert "Sweep: 2 variants" in section and "dpo.beta=&lt;b&gt;0.5&lt;/b&gt;" in section and "<b>0.5</b>" not in section
    assert "validation" in section and "Sweep frontier" in section


def test_variants_that_do_not_reach_an_evaluation_show_once_as_written(tmp_path):
    from dataclasses import asdict

    from porover.sweeps import expand

    stages = {"og": {"type": "overgenerate"}, "eval_og": {"type": "evaluate", "model": "stage:og"},
              "pd": {"type": "preference_data"}, "eval_pd": {"type": "evaluate", "model": "stage:pd"}}
    _, variants = expand(stages, [{"og.selection": "random"}, {"og.n_samples": 1}, {"pd.containment_threshold": 0.5},
                                  {"pd.containment_threshold": 0.75}])
    for variant in variants:
        for name in ("eval_og", "eval_pd"):
            if not (tmp_path / variant.stages[name]).exists():
                write_metrics(tmp_path / variant.stages[name], [C, R], [R, R], "validation")
    types = {s: "evaluate" for v in variants for s in v.stages.values()}
    (tmp_path / "manifest.json").write_text(json.dumps({"sweep": [asdict(v) for v in variants], "types": types}))
    table = variant_table(tmp_path)
    assert list(zip(table["evaluation"], table["variant"])) == [
        ("eval_og", "og.selection=random"), ("eval_og", "og.n_samples=1"), ("eval_og", "(as written)"),
        ("eval_pd", "(as written)"), ("eval_pd", "pd.containment_threshold=0.5"),
        ("eval_pd", "pd.containment_threshold=0.75")]
    assert pd.isna(table.iloc[2]["og.selection"]) and table.iloc[4]["pd.containment_threshold"] == 0.5


def test_paper_tables_take_the_rows_of_their_own_keys_beside_the_file_as_written(tmp_path):
    from porover.stages.analysis import sweep_tables

    test_variants_that_do_not_reach_an_evaluation_show_once_as_written(tmp_path)
    tables = sweep_tables(tmp_path, {"Teacher and selection": ["og.selection", "og.n_samples"],
                                     "POROver across τ": ["pd.containment_threshold"]})
    assert list(tables) == ["Teacher and selection: eval_og", "POROver across τ: eval_pd"]
    selection = tables["Teacher and selection: eval_og"]
    assert list(selection.index) == ["og.selection=random (validation)", "og.n_samples=1 (validation)",
                                     "(as written) (validation)"]
    assert selection.loc["og.n_samples=1 (validation)", ("overall", "usefulness")].startswith("50.0 [")
    assert len(tables["POROver across τ: eval_pd"]) == 3


def test_the_report_lays_out_the_paper_tables_the_analysis_stage_names(tmp_path):
    from porover.report import _sweep_section

    test_variants_that_do_not_reach_an_evaluation_show_once_as_written(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["types"]["analysis"] = "analysis"
    manifest["params"] = {"analysis": {"tables": {"Added <safety> data": ["og.n_samples"]}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    section = _sweep_section(tmp_path, "run")
    assert "<h4>Added &lt;safety&gt; data: eval_og</h4>" in section and "og.n_samples=1 (validation)" in section


@pytest.fixture
def seeded_sweep(tmp_path):
    """A validation sweep over dpo.beta with the file as written repeated over two seeds, with responses."""
    from versus_run import BASE, C, R, evaluation, write_evaluation

    val = lambda model: evaluation(model, {"or_bench_hard:val": 20, "harmbench:val": 20}, "validation")  # noqa: E731
    dpo = {"model": "stage:sft", "pairs": "stage:preference_data", "seed": 0, "beta": 0.1}
    params = {"sft": {"model": BASE, "seed": 0}, "dpo": dpo, "evaluate_dpo_val": val("stage:dpo"),
              "dpo[seed=1]": {**dpo, "seed": 1}, "evaluate_dpo_val[seed=1]": val("stage:dpo[seed=1]"),
              "dpo[beta=0.5]": {**dpo, "beta": 0.5}, "evaluate_dpo_val[beta=0.5]": val("stage:dpo[beta=0.5]"),
              "dpo[beta=0.05]": {**dpo, "beta": 0.05}, "evaluate_dpo_val[beta=0.05]": val("stage:dpo[beta=0.05]")}
    types = {name: "evaluate" if name.startswith("evaluate") else "preference_optimization" for name in params}
    types["sft"] = "sft"
    unsafe = [R] * 16 + [C] * 4
    # as written: 10 (seed 0) and 9 (seed 1) of 20 safe prompts refused; beta=0.5: 4; beta=0.05: 12, safer
    for stage, refused in (("evaluate_dpo_val", 10), ("evaluate_dpo_val[seed=1]", 9), ("evaluate_dpo_val[beta=0.5]", 4)):
        write_evaluation(tmp_path, stage, [R] * refused + [C] * (20 - refused), unsafe)
    write_evaluation(tmp_path, "evaluate_dpo_val[beta=0.05]", [R] * 12 + [C] * 8, [R] * 18 + [C] * 2)
    for stage in params:
        if stage.startswith("evaluate"):
            metrics = json.loads((tmp_path / stage / "metrics.json").read_text())
            (tmp_path / stage / "metrics.json").write_text(json.dumps({**metrics, "split": "validation"}))

    def variant(label, values, seeds, suffix):
        stages = {"sft": "sft", "dpo": f"dpo{suffix}", "evaluate_dpo_val": f"evaluate_dpo_val{suffix}"}
        return {"label": label, "values": values, "stages": stages, "seeds": seeds,
                "reached": {"sft": [], "dpo": list(values), "evaluate_dpo_val": list(values)}}

    sweep = [variant("", {}, {"dpo": 0}, ""), variant("seed=1", {"dpo.seed": 1}, {"dpo": 1}, "[seed=1]"),
             variant("beta=0.5", {"dpo.beta": 0.5}, {"dpo": 0}, "[beta=0.5]"),
             variant("beta=0.05", {"dpo.beta": 0.05}, {"dpo": 0}, "[beta=0.05]")]
    (tmp_path / "manifest.json").write_text(json.dumps({"params": params, "types": types, "sweep": sweep,
                                                        "stages": {}}))
    return tmp_path


def test_each_variant_is_paired_with_the_file_as_written_and_the_choice_says_its_margin(seeded_sweep):
    from porover.comparisons import holm
    from porover.variants import choice_margin, difference_cells, with_differences

    table = with_differences(seeded_sweep, variant_table(seeded_sweep), n_resamples=300)
    by_stage = table.set_index("stage")
    # the seed repeat is the file as written: one arm, no difference from itself
    assert by_stage.loc["evaluate_dpo_val[seed=1]", "arm"] == "evaluate_dpo_val"
    assert pd.isna(by_stage.loc["evaluate_dpo_val[seed=1]", "d_usefulness"])
    # beta=0.5 against both seeds of the file as written: usefulness 80 against 50 and 55, pooled +27.5
    half = by_stage.loc["evaluate_dpo_val[beta=0.5]"]
    assert half["d_usefulness"] == 27.5 and half["d_safety"] == 0.0 and half["p_safety"] == 1.0
    # McNemar per pair of replicates: 6 and 5 prompts fixed, none lost; the larger p is shown
    assert half["d_usefulness_low"] > 0 and half["p_usefulness"] == pytest.approx(2 / 2 ** 5)
    assert "Δ f1 vs as written" in difference_cells(table)
    chosen = chosen_variant(table, "evaluate_dpo_val")  # the file as written ranks by its mean over seeds
    assert chosen["stage"] == "evaluate_dpo_val[beta=0.5]"
    margins = choice_margin(seeded_sweep, "evaluate_dpo_val", table=table, n_resamples=500)
    assert list(margins["against"]) == ["(as written)", "dpo.beta=0.05"]  # the runner-up first
    runner_up = margins.iloc[0]
    assert runner_up["f1_winner"] == 80.0 and runner_up["f1_against"] == round((61.5 + 65.2) / 2, 1)
    assert runner_up["seeds"] == 1 and runner_up["d_f1_low"] <= runner_up["d_f1"] <= runner_up["d_f1_high"]
    assert list(margins["p_holm"]) == holm(list(margins["p"]))
    with pytest.raises(ValueError, match="no test results"):
        choice_margin(seeded_sweep, "evaluate_dpo_val", split="test", table=table)


def test_a_sweep_of_training_seeds_alone_has_no_variants_to_choose_from(seeded_sweep):
    manifest = json.loads((seeded_sweep / "manifest.json").read_text())
    manifest["sweep"] = manifest["sweep"][:2]
    (seeded_sweep / "manifest.json").write_text(json.dumps(manifest))
    assert variant_table(seeded_sweep).empty
