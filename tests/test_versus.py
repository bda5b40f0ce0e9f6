"""A run's arms (lineage and seed replicates from the stage wiring), its versus table against counts written down
by hand, the terminal's and the report's views of it, and the figures that follow lineage."""

import json
from math import comb

import pytest

from porover.arms import parent_map, run_arms
from porover.versus import seed_table, versus_table, versus_text
from versus_run import make_run


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "versus")


def test_arms_follow_the_wiring_and_group_seed_repeats(run):
    arms = {arm.name: arm for arm in run_arms(run)}
    assert list(arms) == ["evaluate_base", "evaluate_sft", "evaluate_dpo", "evaluate_dro"]
    dpo = arms["evaluate_dpo"]
    assert dpo.stages == ["evaluate_dpo", "evaluate_dpo[seed=1]"] and dpo.seeds == [{"dpo": 0}, {"dpo": 1}]
    assert dpo.parents == ["evaluate_sft", "evaluate_sft"]  # dpo.model = stage:sft, evaluated by evaluate_sft
    assert arms["evaluate_dro"].parents == ["evaluate_base"]  # dro.model is the base model evaluate_base evaluates
    assert arms["evaluate_base"].parents == [None]
    assert parent_map(run)["evaluate_dpo[seed=1]"] == "evaluate_sft"
    # an evaluation with its own seed draws other prompts: another arm, never a replicate
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["params"]["evaluate_dpo[seed=1]"]["seed"] = 1
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert [arm.name for arm in run_arms(run)] == ["evaluate_base", "evaluate_sft", "evaluate_dpo",
                                                   "evaluate_dpo[seed=1]", "evaluate_dro"]


def test_versus_table_each_arm_against_its_parent_and_its_base(run):
    table = versus_table(run, n_resamples=300)
    pairs = list(zip(table["arm"], table["against"], table["relation"]))
    assert pairs == [("evaluate_sft", "evaluate_base", "parent"), ("evaluate_dpo", "evaluate_sft", "parent"),
                     ("evaluate_dpo", "evaluate_base", "base"), ("evaluate_dro", "evaluate_base", "parent")]
    sft, dpo, _, dro = (row for _, row in table.iterrows())
    # SFT refuses 12 more unsafe prompts (16 vs 4 of 20) and 10 more safe ones (of 20)
    assert sft["d_safety"] == 60.0 and sft["d_usefulness"] == -50.0 and sft["n"] == 40
    assert sft["p_safety"] == pytest.approx(2 / 2 ** 12) and sft["flips_safety"] == "+12/−0"
    # DPO over two seeds: usefulness +5 of 20 (seed 0: 6 fixed, 1 lost) and +4 of 20 (seed 1), pooled +22.5
    assert dpo["seeds"] == 2 and dpo["d_usefulness"] == 22.5 and dpo["flips_usefulness"] == "+6/−1 · +4/−0"
    # McNemar per seed (1 lost of 7 flips; 0 of 4), the larger shown
    assert dpo["p_usefulness"] == pytest.approx(max(2 * sum(comb(7, k) for k in range(2)) / 2 ** 7, 2 / 2 ** 4))
    assert dpo["d_safety"] == -2.5 and dpo["d_usefulness_low"] <= 22.5 <= dpo["d_usefulness_high"]
    assert dro["d_safety"] == dro["d_safety_low"] == dro["d_safety_high"] == 0.0  # identical outcomes
    assert dpo["detectable_usefulness"] > 0 and pd_isna(dro["detectable_usefulness"])


def pd_isna(value) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def test_the_terminal_shows_each_arm_against_its_parent(run):
    text = versus_text(run)
    lines = text.splitlines()
    assert lines[0].startswith("each arm against the arm it was trained from")
    dpo = next(line for line in lines if line.startswith("evaluate_dpo "))
    assert "evaluate_sft" in dpo and "+22.5 [" in dpo and "-2.5 [" in dpo
    assert not any("(base)" in line for line in lines) and all(len(line) <= 120 for line in lines)


def test_seed_table_gives_each_repeated_arm_its_mean_and_spread(run):
    table = seed_table(run)
    assert list(table["arm"]) == ["evaluate_dpo"]
    row = table.iloc[0]
    # usefulness: seed 0 answers 15 of 20 safe prompts, seed 1 answers 14
    assert row["usefulness_mean"] == 72.5 and row["usefulness_min"] == 70.0 and row["usefulness_max"] == 75.0
    assert row["usefulness_sd"] == pytest.approx(3.5, abs=0.1) and row["seeds"] == "dpo 0; dpo 1"


def test_the_report_has_a_versus_table_with_flipped_prompts_linked_to_the_browser(run, tmp_path):
    from porover.report import build_report

    index = build_report([run], tmp_path / "report")
    text = index.read_text()
    assert "Versus: paired differences" in text and "Spread over training seeds" in text
    assert "evaluate_dpo[seed=1] vs evaluate_sft: 4 prompts flipped" in text
    assert "href='browser.html#q=safe%20prompt%200'" in text
    assert (tmp_path / "report" / "versus_versus.csv").is_file()
    browser = (tmp_path / "report" / "browser.html").read_text()
    assert 'new URLSearchParams(location.hash.slice(1)).get("q")' in browser


def test_the_tradeoff_figure_draws_arrows_from_each_arm_to_the_one_it_was_trained_from(run):
    from porover.stages import analysis

    table = analysis.stage_metrics(run)
    figure = analysis.tradeoff_figure(table, run)
    arrows = [(a.ax, a.ay, a.x, a.y) for a in figure.layout.annotations if a.showarrow]
    overall = table[table["group"] == "overall"].set_index("stage")
    point = lambda stage: (overall.at[stage, "usefulness"], overall.at[stage, "safety"])  # noqa: E731
    expected = [(*point(a), *point(b)) for a, b in [("evaluate_base", "evaluate_sft"), ("evaluate_sft", "evaluate_dpo"),
                                                     ("evaluate_sft", "evaluate_dpo[seed=1]"),
                                                     ("evaluate_base", "evaluate_dro")]]
    assert sorted(arrows) == sorted(expected)
    assert not [a for a in analysis.tradeoff_figure(table).layout.annotations if a.showarrow]  # no wiring, no arrows
    bars = analysis.stages_figure(table)
    assert {trace.type for trace in bars.data} == {"bar"}  # arms are no sequence: no lines between them


def test_training_curves_show_the_dpo_margin_and_log_probabilities_beside_the_loss():
    from porover.plots import training_figure

    sft = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    dpo = [{"step": s, "loss": 0.7 - 0.1 * s, "rewards/margins": 0.1 * s, "logps/chosen": -50.0 - s,
            "logps/rejected": -60.0 - 3 * s} for s in (1, 2)] + [{"step": 2, "train_loss": 0.6}]
    figure = training_figure({"sft": sft, "dpo": dpo})
    titles = [a.text for a in figure.layout.annotations]
    assert titles[0] == "training loss" and "reward margin (chosen − rejected)" in titles
    drawn = {(trace.name, trace.xaxis): list(trace.y) for trace in figure.data}
    assert drawn[("dpo", "x2")] == [0.1, 0.2] and drawn[("dpo", "x3")] == [-51.0, -52.0]
    assert ("sft", "x2") not in drawn and drawn[("sft", "x")] == [2.0, 1.5]
    assert len(training_figure({"sft": sft}).layout.annotations) == 1  # no DPO stage: the loss alone


def test_stages_the_manifest_has_no_parameters_for_are_read_from_their_parameter_files(run):
    import yaml

    manifest = json.loads((run / "manifest.json").read_text())
    for stage in ("dpo[seed=1]", "evaluate_dpo[seed=1]"):  # as another run file sharing the folder leaves them
        body = manifest["params"].pop(stage)
        resolved = {key: f"{run}/{value[len('stage:'):]}/model" if str(value).startswith("stage:") else value
                    for key, value in body.items()}
        (run / "params").mkdir(exist_ok=True)
        (run / "params" / f"{stage}.yaml").write_text(yaml.safe_dump({**resolved, "run_dir": str(run)}))
    (run / "manifest.json").write_text(json.dumps(manifest))
    dpo = next(arm for arm in run_arms(run) if arm.name == "evaluate_dpo")
    assert dpo.stages == ["evaluate_dpo", "evaluate_dpo[seed=1]"] and dpo.parents == ["evaluate_sft"] * 2


def test_the_versus_table_reads_any_recorded_judge_and_names_a_missing_one(run):
    # Every evaluation records a second judge that calls every response compliance: under it nothing differs.
    for responses in run.glob("*/responses.jsonl"):
        rows = [json.loads(line) for line in responses.read_text().splitlines()]
        rows = [{**row, "refusal:minilm_lr": row["refusal"], "refusal:phrase_lr": "full_compliance"} for row in rows]
        responses.write_text("".join(json.dumps(row) + "\n" for row in rows))
    headline, same = versus_table(run, n_resamples=200), versus_table(run, n_resamples=200, judge="minilm_lr")
    columns = ["d_safety", "d_usefulness", "flips_usefulness"]
    assert headline[columns].equals(same[columns])
    other = versus_table(run, n_resamples=200, judge="phrase_lr")
    assert (other["d_safety"] == 0).all() and (other["d_usefulness"] == 0).all()
    missing = r"evaluate_base/responses.jsonl: no verdicts of judge 'act_lr' \(the stage's judges: minilm_lr, phrase_lr\)"
    with pytest.raises(KeyError, match=missing):
        versus_table(run, judge="act_lr")
