import os
import signal
import subprocess
import sys
import time

from porover.generation import Sampling, TransformersBackend, generate_responses
from porover.models import device_settings, resolve_model
from porover.store import JsonlStore, read_jsonl

PROMPTS = ["What is the capital of France?", "Name a colour.",
           "Write one sentence about the sea and another about the mountains, then stop.", "Say hi.",
           "How do I kill a Python process?", "What is 2 + 2?"]


def test_device_settings_use_fp32_without_bf16_on_cpu():
    settings = device_settings("cpu")
    assert (settings.device, str(settings.dtype), settings.bf16) == ("cpu", "torch.float32", False)


def test_embedded_model_is_cached_as_safetensors():
    folder = resolve_model("smollm2-135m-instruct")
    assert os.path.isfile(os.path.join(folder, "model.safetensors"))
    assert resolve_model("org/some-model") == "org/some-model"


def test_batched_generation_keeps_prompt_order(tiny_model):
    model, tokenizer = tiny_model
    backend = TransformersBackend(model, tokenizer, batch_size=4)
    sampling = Sampling(max_new_tokens=6)
    batched = {i: text for i, text, _ in backend.generate(PROMPTS, sampling)}
    one_by_one = {}
    for i, prompt in enumerate(PROMPTS):
        one_by_one[i] = next(backend.generate([prompt], sampling))[1]
    assert batched == one_by_one
    assert "<|im_start|>user" in backend.render("x", sampling)  # chat template from the tokenizer
    assert "system\nBe brief" in backend.render("x", Sampling(system_prompt="Be brief"))


CHILD = """
import sys
from porover.generation import Sampling, TransformersBackend, generate_responses
from porover.models import load_model
from porover.store import JsonlStore
model, tok = load_model("smollm2-135m-instruct", device="cpu")
rows = [{"source": "t", "id": str(i), "prompt": f"Count from {i} to {i + 30}."} for i in range(12)]
store = JsonlStore(sys.argv[1], key=lambda r: (r["source"], r["id"]))
generate_responses(TransformersBackend(model, tok, batch_size=2), rows, store, Sampling(max_new_tokens=24))
"""


def test_generation_killed_mid_run_resumes_without_duplicates_or_losses(tmp_path, tiny_model):
    path = tmp_path / "generations.jsonl"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not path.exists() or path.read_text().count("\n") < 2):
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    before = read_jsonl(path)
    assert 2 <= len(before) < 12, "the child should be killed part way"
    with path.open("a") as handle:  # as if the kill had landed mid-write
        handle.write('{"source": "t", "id": "trunc')

    model, tokenizer = tiny_model
    backend = TransformersBackend(model, tokenizer, batch_size=4)
    asked = []
    original = backend.generate
    backend.generate = lambda prompts, *a, **k: (asked.extend(prompts), original(prompts, *a, **k))[1]
    rows = [{"source": "t", "id": str(i), "prompt": f"Count from {i} to {i + 30}."} for i in range(12)]
    store = JsonlStore(path, key=lambda r: (r["source"], r["id"]))
    result = generate_responses(backend, rows, store, Sampling(max_new_tokens=24))

    assert [r["id"] for r in result] == [str(i) for i in range(12)]
    assert len(asked) == 12 - len(before)
    stored = read_jsonl(path)
    assert sorted(int(r["id"]) for r in stored) == list(range(12))
    assert all(r["response"] and r["sampling"]["max_new_tokens"] == 24 for r in stored)
    # a finished store is not generated again
    asked.clear()
    generate_responses(backend, rows, JsonlStore(path, key=lambda r: (r["source"], r["id"])), Sampling(max_new_tokens=24))
    assert asked == []
