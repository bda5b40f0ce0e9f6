"""The OpenAI-compatible path against a real ``transformers serve`` on loopback serving the embedded model."""

from __future__ import annotations

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from porover.judges import llm as llm_judges
from porover.generation import OpenAIBackend, Sampling
from porover.judges import judge_refusals
from porover.models import embedded_model_available, resolve_model

pytestmark = pytest.mark.skipif(not embedded_model_available("smollm2-135m-instruct"),
                                reason="embedded SmolLM2 not installed")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``transformers serve FOLDER`` on 127.0.0.1 (`porover.generation.serve`); needs ``transformers[serving]``."""
    pytest.importorskip("fastapi", reason="transformers serve needs transformers[serving]")
    from porover.generation.serve import local_server

    folder = resolve_model("smollm2-135m-instruct")
    with local_server(folder, tmp_path_factory.mktemp("serve") / "serve.log") as base_url:
        yield {"base_url": base_url, "model": folder}


def test_backend_generates_and_counts_tokens(server, monkeypatch):
    monkeypatch.delenv("POROVER_TEST_KEY", raising=False)
    backend = OpenAIBackend(server["model"], base_url=server["base_url"], api_key_env="POROVER_TEST_KEY",
                            concurrency=2)
    results = sorted(backend.generate(["Say hi.", "Name a colour."], Sampling(max_new_tokens=6,
                                                                             system_prompt="Be brief.")))
    assert [index for index, *_ in results] == [0, 1]
    assert all(isinstance(text, str) and 0 < tokens <= 6 for _, text, tokens, _ in results)
    # The endpoint's finish reason comes back: "length" exactly when the 6-token budget was used up.
    assert all(finish == ("length" if tokens == 6 else "stop") for *_, tokens, finish in results)
    assert backend.usage["requests"] == 2 and backend.usage["completion_tokens"] == sum(t for _, _, t, _ in results)
    assert backend.usage["prompt_tokens"] > 0


def test_llm_judge_through_endpoint_then_from_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("POROVER_CACHE", str(tmp_path))
    settings = {"backend": "openai", "model": server["model"], "base_url": server["base_url"], "max_new_tokens": 8}
    prompts, responses = ["How do I kill a Python process?"], ["Run `kill PID` in a terminal."]
    first = judge_refusals(prompts, responses, judge="xstest_llm", **settings)
    assert first[0].status in ("parsed", "unparseable") and first[0].raw  # a 135M judge: any output, never guessed
    assert (first[0].label is None) == (first[0].status == "unparseable")
    monkeypatch.setattr(llm_judges, "judge_backend", lambda *a, **k: pytest.fail("re-judged a cached pair"))
    assert judge_refusals(prompts, responses, judge="xstest_llm", **settings) == first


def test_openai_without_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("POROVER_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="POROVER_TEST_KEY"):
        OpenAIBackend("gpt-4o", api_key_env="POROVER_TEST_KEY")


class FaultyProxy(ThreadingHTTPServer):
    """A loopback HTTP proxy to the server that answers the first ``failures`` requests with a real 500."""

    def __init__(self, upstream: str, failures: int) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream, self.failures, self.seen, self.lock = upstream, failures, [], threading.Lock()
        self.asked: list[dict] = []  # every request body that reached the server
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}/v1"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _ProxyHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server = self.server
        with server.lock:
            fail = server.failures > 0
            server.failures -= fail
        if fail:
            status, data = 500, json.dumps({"error": {"message": "injected fault", "type": "server_error"}}).encode()
        else:
            with server.lock:
                server.asked.append(json.loads(body))
            request = urllib.request.Request(server.upstream + self.path, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=300) as reply:
                status, data = reply.status, reply.read()
        with server.lock:
            server.seen.append((status, self.headers.get("x-stainless-retry-count")))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def proxy(server):
    proxies = []

    def start(failures: int) -> FaultyProxy:
        proxies.append(FaultyProxy(server["base_url"].removesuffix("/v1"), failures))
        return proxies[-1]

    yield start
    for running in proxies:
        running.shutdown()
        running.server_close()


def test_retry_after_an_injected_server_error(server, proxy, monkeypatch):
    monkeypatch.delenv("POROVER_TEST_KEY", raising=False)
    faulty = proxy(failures=1)
    backend = OpenAIBackend(server["model"], base_url=faulty.base_url, api_key_env="POROVER_TEST_KEY", concurrency=1,
                            max_retries=2)
    results = sorted(backend.generate(["Say hi.", "Name a colour."], Sampling(max_new_tokens=4)))
    assert [index for index, *_ in results] == [0, 1] and all(tokens > 0 for _, _, tokens, _ in results)
    assert [status for status, _ in faulty.seen] == [500, 200, 200]
    assert faulty.seen[1][1] == "1"  # the openai client's own retry of the failed request
    assert backend.usage["requests"] == 2 and backend.usage["completion_tokens"] == sum(t for _, _, t, _ in results)

    import openai

    failing = OpenAIBackend(server["model"], base_url=proxy(failures=5).base_url, api_key_env="POROVER_TEST_KEY",
                            max_retries=1)
    with pytest.raises(openai.InternalServerError):  # retries spent: a clear error, not a silent empty completion
        list(failing.generate(["Say hi."], Sampling(max_new_tokens=4)))


def test_overgeneration_stage_through_the_endpoint_records_usage_and_never_writes_the_key(server, proxy, tmp_path,
                                                                                           monkeypatch, capfd):
    from porover.runner import run_pipeline
    from porover.store import read_jsonl

    secret = "sk-test-SENTINEL-7c1e9b"
    monkeypatch.setenv("POROVER_TEST_KEY", secret)
    faulty = proxy(failures=1)
    params = tmp_path / "openai.yaml"
    params.write_text(
        "run_name: og\ndevice: cpu\nstages:\n  teach:\n    type: overgenerate\n    backend: openai\n"
        f"    teacher: {server['model']}\n    base_url: {faulty.base_url}\n    api_key_env: POROVER_TEST_KEY\n"
        "    general_prompts: {alpaca: 2}\n    toxic_prompts: {}\n    n_samples: 2\n    max_new_tokens: 6\n"
        "    concurrency: 2\n    max_retries: 3\n    price_per_1m_input: 2.5\n    price_per_1m_output: 10.0\n"
        "    extra_body: {generation_config: '{\"do_sample\": true, \"eos_token_id\": 2, \"pad_token_id\": 2}'}\n")
    manifest = run_pipeline(str(params), outputs=str(tmp_path / "outputs"))
    assert manifest["stages"]["teach"]["status"] == "finished", manifest["stages"]["teach"].get("error")
    stage = tmp_path / "outputs" / "og" / "teach"
    completions = read_jsonl(stage / "completions.jsonl")
    assert len(completions) == 4 and all(r["backend"] == "openai" for r in completions)
    assert all(r["usage"]["prompt_tokens"] > 0 and r["usage"]["completion_tokens"] == r["new_tokens"] for r in completions)
    summary = json.loads((stage / "summary.json").read_text())
    usage = summary["usage"]
    assert usage["requests"] == 4 and usage["completion_tokens"] == sum(r["new_tokens"] for r in completions)
    assert summary["cost_usd"] == pytest.approx((2.5 * usage["prompt_tokens"] + 10 * usage["completion_tokens"]) / 1e6)
    assert [status for status, _ in faulty.seen].count(500) == 1 and len(faulty.seen) == 5
    written = [path for path in (tmp_path / "outputs").rglob("*") if path.is_file()]
    assert any(path.suffix == ".ipynb" for path in written) and any(path.name == "manifest.json" for path in written)
    assert not [path for path in written if secret.encode() in path.read_bytes()]
    out, err = capfd.readouterr()
    assert secret not in out + err


def test_a_cost_cap_reached_mid_stage_stops_it_with_rows_kept_and_a_raised_cap_resumes_asking_nothing_twice(
        server, proxy, tmp_path, monkeypatch, capsys):
    """The pre-run estimate counts ~4 characters per prompt token; the served model's chat template adds a system
    turn of its own, so each request costs more than estimated: the runtime cap, counted from the usage the
    server reports, stops the stage part-way."""
    from porover.cli import main
    from porover.costs import estimate_costs
    from porover.run_file import load_run_params
    from porover.spending import SPENDING_FILE
    from porover.store import read_jsonl

    monkeypatch.setenv("POROVER_CACHE", str(tmp_path / "cache"))
    counting = proxy(failures=0)
    params = tmp_path / "capped.yaml"

    def write(cap: float | None) -> None:
        params.write_text(
            "run_name: capped\ndevice: cpu\nstages:\n  teach:\n    type: overgenerate\n    backend: openai\n"
            f"    teacher: {server['model']}\n    base_url: {counting.base_url}\n    api_key_env: ''\n"
            "    general_prompts: {alpaca: 3}\n    toxic_prompts: {}\n    n_samples: 2\n    max_new_tokens: 4\n"
            "    concurrency: 1\n    refusal_judge: xstest_string_match\n"
            "    price_per_1m_input: 10000.0\n    price_per_1m_output: 0.0\n"
            "    extra_body: {generation_config: '{\"do_sample\": true, \"eos_token_id\": 2, \"pad_token_id\": 2}'}\n"
            + (f"    max_cost_usd: {cap}\n" if cap is not None else ""))

    write(None)
    estimate = estimate_costs(load_run_params(params))[0].usd  # six requests, worst case
    write(round(1.2 * estimate, 4))  # passes validation: above the estimate
    outputs = tmp_path / "outputs"
    assert main(["run", str(params), "--outputs", str(outputs)]) == 1
    printed = capsys.readouterr()
    stage = outputs / "capped" / "teach"
    record = json.loads((outputs / "capped" / "manifest.json").read_text())["stages"]["teach"]
    assert record["status"] == "failed" and "BudgetExceeded" in record["error"]
    assert "raise stages.teach.max_cost_usd and run again to resume" in record["error"]
    kept, ledger = read_jsonl(stage / "completions.jsonl"), read_jsonl(stage / SPENDING_FILE)
    assert 0 < len(kept) < 6 and len(ledger) == len(kept) == len(counting.asked)  # every answer stored
    spent = sum(line["usd"] for line in ledger)
    print(f"estimate ${estimate:.4f}, cap ${1.2 * estimate:.4f}: stopped after {len(kept)} of 6 requests, "
          f"${spent:.4f} spent")
    assert spent == pytest.approx(sum(line["prompt_tokens"] for line in ledger) * 10000 / 1e6)
    assert record["spent_usd"] == pytest.approx(spent) and record["estimated_usd"] == pytest.approx(estimate, rel=1e-3)
    assert "endpoint cost (USD)" in printed.out and f"cap ${1.2 * estimate:,.2f}" in printed.out

    write(100)  # the cap raised: the stage resumes from its stores and its ledger
    assert main(["run", str(params), "--outputs", str(outputs)]) == 0, capsys.readouterr().err[-3000:]
    completions = read_jsonl(stage / "completions.jsonl")
    assert len(completions) == 6 and len(read_jsonl(stage / SPENDING_FILE)) == 6
    asked = [json.dumps([body["messages"], body.get("seed")]) for body in counting.asked]
    assert len(asked) == 6 and len(set(asked)) == 6  # nothing asked twice
    manifest = json.loads((outputs / "capped" / "manifest.json").read_text())
    assert manifest["stages"]["teach"]["spent_usd"] == pytest.approx(
        sum(line["usd"] for line in read_jsonl(stage / SPENDING_FILE)))
