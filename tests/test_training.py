"""The training stages: real TRL steps on the embedded model at tiny sizes, resume, validation, launch command."""

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from transformers import TrainerCallback

from porover.models import load_model
from porover.run_file import load_run_params
from porover.stages.preference_optimization import PreferenceOptimizationParams, run_preference_optimization
from porover.stages.sft import SFTParams, run_sft
from porover.stages.launch import launch_command, launch_env, run_training

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(max_steps=2, per_device_train_batch_size=2, max_length=64, save_steps=1, device="cpu", learning_rate=1e-4)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def sft_file(tmp_path):
    return write_jsonl(tmp_path / "sft.jsonl", [
        {"messages": [{"role": "user", "content": f"How do I kill process {i} on Linux?"},
                      {"role": "assistant", "content": f"Run kill {i} in a terminal."}], "source": "t", "id": i}
        for i in range(4)])


@pytest.fixture
def pairs_file(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": f"How do I shoot photo number {i} at night?", "chosen": "Use a tripod and a long exposure.",
         "rejected": "I'm sorry, I can't help with that.", "kind": "over_refusal", "id": i} for i in range(4)])


class Killed(Exception):
    """Stands for the process being killed."""


class Recorder(TrainerCallback):
    """Counts the optimizer steps run in this process and keeps the first training batch."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.steps, self.batch, self.stop_at = 0, None, stop_at

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.batch = next(iter(train_dataloader))

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.stop_at:
            raise Killed(f"after the checkpoint of step {state.global_step}")


def test_sft_with_lora_masks_the_prompt_saves_a_loadable_model_and_resumes(tmp_path, sft_file, tiny_model, monkeypatch):
    _, tokenizer = tiny_model
    # keep_checkpoints: asking for more steps later continues from the last one (by default they go when done)
    params = SFTParams(data=str(sft_file), lora=True, run_dir=str(tmp_path / "run"), keep_checkpoints=True,
                       **{**TINY, "max_steps": 3})
    killed = Recorder(stop_at=2)
    with pytest.raises(Killed):
        run_sft(params, callbacks=[killed])
    assert killed.steps == 2 and not (tmp_path / "run" / "sft" / "training_log.json").exists()

    # Only completion tokens (the answer and its end-of-turn) carry labels; every prompt token is masked.
    batch = killed.batch
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        trained = tokenizer.decode(ids[labels != -100])
        assert trained.startswith("Run kill") and trained.rstrip().endswith("<|im_end|>")
        assert "How do I" not in trained and "user" not in trained and "system" not in trained

    resumed = Recorder()
    log = run_sft(params, callbacks=[resumed])
    assert resumed.steps == 1 and log["global_step"] == 3  # resumed at step 2, not from scratch
    assert log["resumed_from"].endswith("checkpoint-2")
    assert [h["step"] for h in log["log_history"] if "loss" in h] == [1, 2, 3]

    out = tmp_path / "run" / "sft"
    from porover.models import is_adapter_folder, model_digest, resolve_model

    assert is_adapter_folder(out / "model")  # a LoRA stage keeps the adapter, not a second full copy
    assert sum(f.stat().st_size for f in (out / "model").iterdir()) < 50e6
    model, _ = load_model(str(out / "model"), device="cpu")  # merged on first use, cached by content
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert Path(resolve_model(str(out / "model"))).name == model_digest(str(out / "model")).removeprefix("sha256:")

    import trl

    with monkeypatch.context() as patched:
        patched.setattr(trl, "SFTTrainer", lambda *a, **k: pytest.fail("a finished stage trained again"))
        assert run_sft(params)["global_step"] == 3

    more = Recorder()
    assert run_sft(SFTParams(**{**params.__dict__, "max_steps": 4}), callbacks=[more])["global_step"] == 4
    assert more.steps == 1  # asking for more steps continues from the last checkpoint


def test_dpo_with_lora_logs_rewards_margins_and_logps(tmp_path, pairs_file):
    params = PreferenceOptimizationParams(pairs=str(pairs_file), run_dir=str(tmp_path), **{**TINY, "max_steps": 1})
    log = run_preference_optimization(params)
    logged = [h for h in log["log_history"] if "loss" in h]
    assert len(logged) == 1 and log["global_step"] == 1
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert isinstance(logged[0][key], float), key
    out = tmp_path / "preference_optimization"
    from porover.models import is_adapter_folder

    assert is_adapter_folder(out / "model") and not (out / "checkpoints").exists()


def test_empty_or_small_pair_file_fails_before_any_model_loads(tmp_path, pairs_file, monkeypatch):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match=rf"notebook parameters\.pairs: {empty}: 0 preference pair"):
        PreferenceOptimizationParams.from_namespace({"pairs": str(empty)})
    # Every training stage reaches its weights through `open_model(...).weights()` -> `porover.models.resolve_model`.
    monkeypatch.setattr("porover.models.resolve_model", lambda name: pytest.fail("a model was loaded"))
    with pytest.raises(ValueError, match=rf"{pairs_file}: 4 preference pair\(s\).*fewer than min_pairs=5"):
        run_preference_optimization(PreferenceOptimizationParams(pairs=str(pairs_file), min_pairs=5, run_dir=str(tmp_path)))
    with pytest.raises(ValueError, match=rf"{empty}: no SFT rows"):
        run_sft(SFTParams(data=str(empty), run_dir=str(tmp_path)))


def test_validation_names_each_bad_key(tmp_path, pairs_file, sft_file):
    with pytest.raises(ValueError) as error:
        PreferenceOptimizationParams.from_namespace({
            "pairs": str(pairs_file), "loss_type": "dpo_plus", "beta": 0, "kinds": ["toxic"], "num_processes": 0,
            "accelerate_config": "slurm", "max_steps": 0, "lr_scheduler_type": "zigzag"})
    text = str(error.value)
    for expected in ("loss_type: expected one of sigmoid, hinge", "beta: expected a value > 0, got 0",
                     "kinds: expected a non-empty list", "num_processes: expected a value >= 1, got 0",
                     "accelerate_config: no config 'slurm'; give one of ddp, ddp_cpu, deepspeed_zero2, deepspeed_zero3, fsdp",
                     "max_steps: expected -1", "lr_scheduler_type: expected one of linear, cosine"):
        assert expected in text, expected
    with pytest.raises(ValueError, match="KTO estimates its KL term within a batch"):
        PreferenceOptimizationParams.from_namespace({"pairs": str(pairs_file), "loss_type": "kto",
                                                      "per_device_train_batch_size": 1})
    with pytest.raises(ValueError, match=r"data: SFT data not found: .*missing\.jsonl"):
        SFTParams.from_namespace({"data": str(tmp_path / "missing.jsonl")})
    # In a run file, stage references are paths that do not exist yet: they are not checked.
    run = tmp_path / "run.yaml"
    run.write_text("stages:\n  teach:\n    type: overgenerate\n  sft:\n    type: sft\n    data: stage:teach\n"
                   "  pairs:\n    type: preference_data\n    student: stage:sft\n"
                   "  dpo:\n    type: preference_optimization\n    model: stage:sft\n    pairs: stage:pairs\n")
    assert list(load_run_params(run).stages) == ["teach", "sft", "pairs", "dpo"]


def test_launch_command_runs_the_same_parameters_under_accelerate(tmp_path, sft_file, monkeypatch):
    params = SFTParams(data=str(sft_file), num_processes=8, accelerate_config="fsdp", run_dir=str(tmp_path), device="cuda")
    command = launch_command(params)
    params_file = tmp_path / "sft" / "launch_params.yaml"
    assert Path(command[0]).name == "accelerate" and command[1:] == [
        "launch", "--config_file", str(ROOT / "porover" / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "8",
        "-m", "porover.train_cli", "sft", str(params_file)]
    assert SFTParams.from_namespace(yaml.safe_load(params_file.read_text()), str(params_file)) == params
    for name in ("ddp", "ddp_cpu", "fsdp", "deepspeed_zero2", "deepspeed_zero3"):
        config = yaml.safe_load((ROOT / "configs" / "accelerate" / f"{name}.yaml").read_text())
        assert config["distributed_type"] in ("MULTI_GPU", "FSDP", "DEEPSPEED") and config["use_cpu"] == (name == "ddp_cpu")
    dpo = PreferenceOptimizationParams(num_processes=2, accelerate_config=str(ROOT / "configs/accelerate/ddp.yaml"),
                                       run_dir=str(tmp_path))
    assert launch_command(dpo)[-2:] == ["preference_optimization", str(tmp_path / "preference_optimization" / "launch_params.yaml")]
    # On the CPU, ddp means DDP over gloo (ddp_cpu.yaml); FSDP needs accelerators; DeepSpeed needs the package.
    on_cpu = SFTParams(**{**params.__dict__, "device": "cpu", "accelerate_config": "ddp"})
    assert launch_command(on_cpu)[3] == str(ROOT / "porover" / "configs" / "accelerate" / "ddp_cpu.yaml")
    with pytest.raises(ValueError, match="'fsdp' asks for FSDP, which accelerate runs on GPUs .* only, never on CPU "
                                         "ranks; on the CPU give 'ddp'"):
        launch_command(SFTParams(**{**params.__dict__, "device": "cpu"}))
    zero3 = SFTParams(**{**params.__dict__, "device": "cpu", "accelerate_config": "deepspeed_zero3"})
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(ValueError, match="'deepspeed_zero3' asks for DeepSpeed, which is not installed here"):
            launch_command(zero3)
    else:
        assert launch_command(zero3)[3].endswith("deepspeed_zero3.yaml")
        assert "ACCELERATE_USE_CPU" not in launch_env(zero3)  # accelerate's CPU mode would turn DeepSpeed off
    assert launch_env(on_cpu)["ACCELERATE_USE_CPU"] == "true"

    launched = []

    def fake_launch(cmd, env, log_file):  # what the launched ranks leave behind
        launched.append(cmd)
        assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT) and log_file == tmp_path / "sft" / "launch.log"
        (tmp_path / "sft" / "training_log.json").write_text(json.dumps({"global_step": 7}))

    monkeypatch.setattr("porover.stages.launch._launch", fake_launch)
    assert run_training(params) == {"global_step": 7} and launched == [command]
    # The entry point the ranks run validates the parameters file before training.
    from porover.train_cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**yaml.safe_load(params_file.read_text()), "lora_r": 0}))
    with pytest.raises(ValueError, match=re.escape(f"{bad}.lora_r: expected a value >= 1, got 0")):
        main(["sft", str(bad)])


TWO = dict(lora=True, lora_dropout=0.0, max_steps=2, max_length=64, save_steps=1, device="cpu", learning_rate=1e-4)


def _one_process(params):
    """The stage in this process on one thread, as each launched rank runs (OMP_NUM_THREADS = cores / processes)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # also much faster than 2 threads on cores shared with other jobs
    try:
        return run_training(params)
    finally:
        torch.set_num_threads(threads)


def _assert_two_processes_trained_what_one_did(one: dict, two: dict, out: Path) -> None:
    """4 rows, one global batch of 4 per step either way (2 processes x 2 = 1 process x 4): every step sees every
    row, so the same tokens, losses equal up to the order of the reductions, (nearly) the same weights; the
    2-process model saved once, by rank 0, loadable and generating."""
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert one["train_batch_size"] == two["train_batch_size"] == 4 and one["global_step"] == two["global_step"] == 2
    (s1, t1, l1), (s2, t2, l2) = [zip(*[(h["step"], h["num_tokens"], h["loss"]) for h in log["log_history"] if "loss" in h])
                                  for log in (one, two)]
    print(f"{out.name}: 1 process: steps {s1}, tokens {t1}, loss {l1}; 2 processes: steps {s2}, tokens {t2}, loss {l2}")
    assert s1 == s2 == (1, 2) and t1 == t2 and t1[1] == 2 * t1[0] > 0, (t1, t2)
    assert l1 == pytest.approx(l2, rel=1e-3), (l1, l2)
    assert (out / "launch.log").read_text().count(" saved ") == 1  # only rank 0 saves
    from porover.models import is_adapter_folder

    assert is_adapter_folder(out / "model") and not (out / "checkpoints").exists()  # saved once, optimizer state gone
    model, tokenizer = load_model(str(out / "model"), device="cpu")
    base = load_model("smollm2-135m-instruct", device="cpu")[0].state_dict()
    reference = load_model(one["model_dir"], device="cpu")[0].state_dict()
    moved = max((w - base[k]).abs().max().item() for k, w in reference.items())
    apart = max((w - reference[k]).abs().max().item() for k, w in model.state_dict().items())
    print(f"{out.name}: largest weight change from the base {moved:.3g}; largest 1- vs 2-process difference {apart:.3g}")
    assert apart < moved / 10, (apart, moved)  # trained, and to (nearly) the same weights
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    assert model.generate(**prompt, max_new_tokens=3, do_sample=False).shape[1] == prompt["input_ids"].shape[1] + 3


def test_sft_notebook_on_two_cpu_processes_trains_what_one_process_trains(tmp_path, sft_file):
    import papermill

    params = {**TWO, "data": str(sft_file)}
    one = _one_process(SFTParams(**params, per_device_train_batch_size=4, run_dir=str(tmp_path / "one")))
    papermill.execute_notebook(str(ROOT / "notebooks" / "02_sft.ipynb"), str(tmp_path / "sft.ipynb"), cwd=str(ROOT),
                               parameters={**params, "per_device_train_batch_size": 2, "num_processes": 2,
                                           "run_dir": str(tmp_path / "two")}, progress_bar=False)
    assert "rank 0 of 2 saved" in (tmp_path / "sft.ipynb").read_text()  # the ranks' output reaches the notebook
    two = json.loads((tmp_path / "two" / "sft" / "training_log.json").read_text())
    _assert_two_processes_trained_what_one_did(one, two, tmp_path / "two" / "sft")


def test_dpo_on_two_cpu_processes_trains_what_one_process_trains(tmp_path, pairs_file):
    params = {**TWO, "pairs": str(pairs_file)}
    one = _one_process(PreferenceOptimizationParams(**params, per_device_train_batch_size=4, run_dir=str(tmp_path / "one")))
    two = run_training(PreferenceOptimizationParams(**params, per_device_train_batch_size=2, num_processes=2,
                                                    run_dir=str(tmp_path / "two")))
    _assert_two_processes_trained_what_one_did(one, two, tmp_path / "two" / "preference_optimization")
    assert "rewards/margins" in two["log_history"][0]


def _pre_empted_launch(params) -> str:
    """Launch the stage on two processes as `run_training` does; once its step-2 checkpoint is whole, SIGKILL one
    rank, then the launcher, then what is left of the job (a pre-empted job: the scheduler kills it all).
    Returns the launch's output."""
    import signal
    import subprocess
    import time

    import psutil

    command, log_file = launch_command(params), params.stage_dir / "launch.log"
    with open(log_file, "wb") as log:
        launcher = subprocess.Popen(command, env=launch_env(params), stdout=log, stderr=subprocess.STDOUT)
    saved, deadline = params.stage_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json", time.monotonic() + 600
    while not saved.is_file():
        assert launcher.poll() is None and time.monotonic() < deadline, log_file.read_text()[-3000:]
        time.sleep(0.05)
    job = psutil.Process(launcher.pid).children(recursive=True)
    ranks = sorted((p for p in job if "porover.train_cli" in " ".join(p.cmdline())), key=lambda p: p.pid)
    assert len(ranks) == 2, [p.cmdline() for p in job]
    ranks[1].send_signal(signal.SIGKILL)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    for process in job:  # the surviving rank would wait for its dead peer until gloo's timeout
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(job, timeout=30)
    return log_file.read_text()


@pytest.mark.parametrize("kind", ["sft", pytest.param("dpo", marks=pytest.mark.slow)])
def test_a_pre_empted_two_process_run_resumes_to_what_an_uninterrupted_one_trains(tmp_path, sft_file, pairs_file,
                                                                                   kind):
    from safetensors.torch import load_file

    stage, data = (SFTParams, {"data": str(sft_file)}) if kind == "sft" else \
        (PreferenceOptimizationParams, {"pairs": str(pairs_file)})
    values = {**TWO, **data, "max_steps": 4, "save_steps": 2, "per_device_train_batch_size": 2, "num_processes": 2}
    whole = run_training(stage(**values, run_dir=str(tmp_path / "whole")))
    params = stage(**values, run_dir=str(tmp_path / "killed"))
    output = _pre_empted_launch(params)
    assert not (params.stage_dir / "training_log.json").exists(), output[-3000:]  # killed before it finished
    partial = params.stage_dir / "checkpoints" / "checkpoint-5"  # as if killed while saving a checkpoint
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"cut short")
    resumed = run_training(params)
    assert "checkpoint-5: incomplete" in (params.stage_dir / "launch.log").read_text()
    assert re.search(r"checkpoint-[24]$", resumed["resumed_from"]), resumed["resumed_from"]
    assert resumed["global_step"] == whole["global_step"] == 4 and resumed["num_processes"] == 2
    losses = [{h["step"]: h["loss"] for h in log["log_history"] if "loss" in h} for log in (whole, resumed)]
    print(f"{kind}: uninterrupted losses {losses[0]}; resumed from {resumed['resumed_from']}: {losses[1]}")
    assert list(losses[1]) == list(losses[0]) == [1, 2, 3, 4]
    assert list(losses[1].values()) == pytest.approx(list(losses[0].values()), rel=1e-4)
    a, b = [load_file(folder / "model" / "adapter_model.safetensors")
            for folder in (tmp_path / "whole" / params.stage_name, params.stage_dir)]
    moved = max(w.abs().max().item() for k, w in a.items() if "lora_B" in k)  # B starts at zero
    apart = max((w - b[k]).abs().max().item() for k, w in a.items())
    print(f"{kind}: largest adapter weight {moved:.3g}; largest uninterrupted vs resumed difference {apart:.3g}")
    assert moved > 0 and apart <= 1e-3 * moved, (apart, moved)


def test_a_failed_launch_shows_the_failing_rank_error(tmp_path, sft_file):
    params = SFTParams(data=str(sft_file), num_processes=2, device="cpu", run_dir=str(tmp_path))
    sft_file.unlink()  # validated here; gone when the ranks validate the parameters file again
    with pytest.raises(RuntimeError, match=r"(?s)exited with status 1; the full output is in .*launch\.log.*"
                                           r"Traceback.*ValueError: invalid parameters:\n .*SFT data not found"):
        run_training(params)


@pytest.mark.slow
def test_sft_then_dpo_notebooks_run_with_papermill(tmp_path, sft_file, pairs_file):
    import papermill

    tiny = {"max_steps": 1, "per_device_train_batch_size": 2, "max_length": 64, "device": "cpu", "run_dir": str(tmp_path)}
    papermill.execute_notebook(str(ROOT / "notebooks" / "02_sft.ipynb"), str(tmp_path / "sft.ipynb"), cwd=str(ROOT),
                               parameters={**tiny, "data": str(sft_file), "lora": True}, progress_bar=False)
    model = tmp_path / "sft" / "model"
    assert (model / "config.json").is_file()
    papermill.execute_notebook(str(ROOT / "notebooks" / "05_preference_optimization.ipynb"), str(tmp_path / "dpo.ipynb"),
                               cwd=str(ROOT), parameters={**tiny, "model": str(model), "pairs": str(pairs_file)},
                               progress_bar=False)
    log = json.loads((tmp_path / "preference_optimization" / "training_log.json").read_text())
    assert log["global_step"] == 1 and "rewards/margins" in log["log_history"][0]
    executed = (tmp_path / "dpo.ipynb").read_text()
    assert "rewards/margins" in executed and "application/vnd.plotly" in executed
