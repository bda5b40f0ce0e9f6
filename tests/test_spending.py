"""Cost caps before a run: a cap below a stage's worst-case estimate, or on an unpriced model, fails validation;
prices are shared across the file's stages; a cap or a price is no change to what a stage writes.
(The cap while a stage runs, against a real server: tests/test_openai_backend.py.)"""

import subprocess
import sys
from pathlib import Path

import pytest

from porover.run_file import load_run_params

ROOT = Path(__file__).resolve().parent.parent
RUN = """run_name: capped
prices: {{judge-4: [1.0, 4.0]}}
stages:
  teach:
    type: overgenerate
    backend: openai
    teacher: gpt-4o
    api_key_env: ''
    base_url: http://127.0.0.1:9/v1
    general_prompts: {{alpaca: 100}}
    toxic_prompts: {{}}
    n_samples: 8
    max_new_tokens: 512
    price_per_1m_input: 2.5
    price_per_1m_output: 10.0
    max_cost_usd: {teach_cap}
  eval:
    type: evaluate
    benchmarks: {{xstest: 10}}
    judges: [xstest_llm]
    judge_settings:
      xstest_llm: {{backend: openai, model: {judge}, base_url: 'http://127.0.0.1:9/v1', api_key_env: ''}}
    max_cost_usd: 1
"""


def test_a_cap_below_the_worst_case_estimate_or_on_an_unpriced_model_fails_validation(tmp_path):
    from porover.costs import estimate_costs
    from porover.runner import estimated_usd, params_digest

    path = tmp_path / "run.yaml"
    path.write_text(RUN.format(teach_cap=50, judge="judge-4"))
    run = load_run_params(path)
    # 100 prompts x 8 samples x 512 tokens at $10 per million output tokens: $4.10 of output, plus input
    teach = estimate_costs(run)[0]
    assert (teach.api_calls, teach.output_tokens) == (800, 409_600) and 4.10 < teach.usd < 4.2
    assert estimated_usd(run)["teach"] == pytest.approx(teach.usd, abs=1e-4)
    # every stage gets the file's prices: the top level's and the overgeneration teacher's
    assert run.stages["eval"].params["prices"] == {"judge-4": [1.0, 4.0], "gpt-4o": [2.5, 10.0]}
    assert run.stages["teach"].params["prices"]["judge-4"] == [1.0, 4.0]

    path.write_text(RUN.format(teach_cap=4, judge="judge-4"))
    with pytest.raises(ValueError, match=rf"stages\.teach\.max_cost_usd: 4 is below the stage's worst-case estimate "
                                         rf"\${teach.usd:,.2f} \(800 calls, .*409,600 output tokens"):
        load_run_params(path)
    path.write_text(RUN.format(teach_cap=50, judge="unpriced-model"))
    with pytest.raises(ValueError, match=r"stages\.eval\.max_cost_usd: a cap needs a price .*'unpriced-model'"):
        load_run_params(path)
    done = subprocess.run([sys.executable, "-m", "porover", "validate", str(path)], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 2 and "unpriced-model" in done.stderr

    path.write_text(RUN.format(teach_cap=5, judge="judge-4"))
    done = subprocess.run([sys.executable, "-m", "porover", "validate", str(path)], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert f"teach: worst-case endpoint cost ${teach.usd:,.2f} (cap $5.00)" in done.stdout

    # raising a cap (or changing a price) re-runs nothing: it changes no output
    raised = load_run_params(path).stages["teach"].params
    assert params_digest({**raised, "max_cost_usd": 500, "prices": {}}) == params_digest(raised)
    assert params_digest({**raised, "n_samples": 4}) != params_digest(raised)


def test_bad_prices_name_the_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(RUN.format(teach_cap=50, judge="judge-4").replace("[1.0, 4.0]", "[1.0]"))
    with pytest.raises(ValueError, match=r"run\.yaml: prices\.judge-4: expected \[USD per 1M input tokens, USD per 1M "
                                         r"output tokens\], got \[1\.0\]"):
        load_run_params(path)
