"""A small run folder with hand-made outcomes: a base, SFT from the base, DPO from SFT over two training seeds, and
DRO on the base, wired as a run file wires them (the manifest's params and types), so lineage, seed replicates and
paired differences can be checked against counts written down here."""

from __future__ import annotations

import json
from pathlib import Path

from porover.metrics import compute_metrics
from porover.store import write_jsonl

R, C = "full_refusal", "full_compliance"
BASE = "smollm2-135m-instruct"
BENCHMARKS = {"xstest": None}


def evaluation(model: str, benchmarks: dict = BENCHMARKS, split: str = "test") -> dict:
    return {"model": model, "benchmarks": benchmarks, "judges": ["minilm_lr"], "seed": 0, "split": split,
            "max_new_tokens": 64}


def write_evaluation(run_dir: Path, stage: str, safe: list[str], unsafe: list[str], prompt_ids: list[int] | None = None) -> None:
    """Responses of one evaluation: ``safe[i]`` / ``unsafe[i]`` is the verdict on safe / unsafe prompt ``i``."""
    rows = [{"source": "xstest", "id": f"s{i}", "label": "safe", "category": "c", "prompt": f"safe prompt {i}",
             "response": f"{stage} says {verdict}", "refusal": verdict, "judge": "minilm_lr"}
            for i, verdict in enumerate(safe)]
    rows += [{"source": "xstest", "id": f"u{i}", "label": "unsafe", "category": "c", "prompt": f"unsafe prompt {i}",
              "response": f"{stage} says {verdict}", "refusal": verdict, "judge": "minilm_lr"}
             for i, verdict in enumerate(unsafe)]
    folder = run_dir / stage
    write_jsonl(folder / "responses.jsonl", rows)
    metrics = {**compute_metrics(rows, bootstrap_samples=20), "split": "test", "judge": "minilm_lr", "model": stage}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def make_run(run_dir: Path) -> Path:
    """``evaluate_base`` → ``evaluate_sft`` → ``evaluate_dpo`` (seeds 0 and 1) and ``evaluate_dro`` (from the base).

    Outcomes on 20 safe and 20 unsafe prompts:
    - base: answers every safe prompt, refuses 4 unsafe ones;
    - SFT: refuses 10 safe prompts (s0-s9) and 16 unsafe ones (u0-u15);
    - DPO seed 0: answers s0-s5 again (6 gained), refuses s19 (1 lost); unsafe as SFT but answers u0 (1 lost);
    - DPO seed 1: answers s0-s3 again (4 gained); unsafe as SFT;
    - DRO: as the base.
    """
    params = {"evaluate_base": evaluation(BASE),
              "sft": {"model": BASE, "data": "stage:overgenerate", "seed": 0, "learning_rate": 5e-5},
              "evaluate_sft": evaluation("stage:sft"),
              "dpo": {"model": "stage:sft", "pairs": "stage:preference_data", "seed": 0, "beta": 0.1},
              "evaluate_dpo": evaluation("stage:dpo"),
              "dpo[seed=1]": {"model": "stage:sft", "pairs": "stage:preference_data", "seed": 1, "beta": 0.1},
              "evaluate_dpo[seed=1]": evaluation("stage:dpo[seed=1]"),
              "dro": {"model": BASE, "n_pairs": 10, "seed": 0},
              "evaluate_dro": evaluation("stage:dro")}
    types = {name: "evaluate" if name.startswith("evaluate") else name.split("[")[0] for name in params}
    types.update(sft="sft", dpo="preference_optimization", **{"dpo[seed=1]": "preference_optimization"})
    safe_base, unsafe_base = [C] * 20, [R] * 4 + [C] * 16
    safe_sft, unsafe_sft = [R] * 10 + [C] * 10, [R] * 16 + [C] * 4
    write_evaluation(run_dir, "evaluate_base", safe_base, unsafe_base)
    write_evaluation(run_dir, "evaluate_sft", safe_sft, unsafe_sft)
    write_evaluation(run_dir, "evaluate_dpo", [C] * 6 + [R] * 4 + [C] * 9 + [R], [C] + [R] * 15 + [C] * 4)
    write_evaluation(run_dir, "evaluate_dpo[seed=1]", [C] * 4 + [R] * 6 + [C] * 10, unsafe_sft)
    write_evaluation(run_dir, "evaluate_dro", safe_base, unsafe_base)
    stages = {name: {"status": "finished", "type": types[name], "wall_seconds": 1.0} for name in params}
    manifest = {"params": params, "types": types, "stages": stages, "sweep": []}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    return run_dir
