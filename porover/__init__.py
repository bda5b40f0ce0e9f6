"""POROver Workbench: overgeneration and preference optimization against over-refusal, in notebooks.

Public names are re-exported here lazily (PEP 562), so ``import porover`` costs nothing until a name is
used: ``porover validate`` and every command-line error answer without importing torch.
"""

from __future__ import annotations

import importlib
import importlib.util

# public name -> module that defines it
_EXPORTS = {
    "ches_scores": "porover.methods.ches.scores",
    "known_datasets": "porover.data", "load_prompts": "porover.data",
    "OpenAIBackend": "porover.generation", "RecordedBackend": "porover.generation", "Sampling": "porover.generation",
    "TransformersBackend": "porover.generation", "generate_responses": "porover.generation",
    "make_backend": "porover.generation", "sample_completions": "porover.generation",
    "JUDGES": "porover.judges", "judge_csv": "porover.judges", "judge_refusals": "porover.judges",
    "judge_safety": "porover.judges", "xstest_string_match": "porover.judges",
    "compute_metrics": "porover.metrics", "f1": "porover.metrics", "metrics_table": "porover.metrics",
    "score_group": "porover.metrics",
    "device_settings": "porover.models", "load_model": "porover.models", "resolve_model": "porover.models",
    "run_pipeline": "porover.runner",
    "CRITERIA": "porover.selection", "reward_scores": "porover.selection", "select": "porover.selection",
    "select_one": "porover.selection",
    "JsonlStore": "porover.store", "read_jsonl": "porover.store", "write_jsonl": "porover.store",
    "Verdict": "porover.vocabulary", "SafetyVerdict": "porover.vocabulary", "REFUSAL_CLASSES": "porover.vocabulary",
    "is_refusal": "porover.vocabulary",
    "AnalysisParams": "porover.stages.analysis", "EvaluateParams": "porover.stages.evaluate",
    "OvergenerateParams": "porover.stages.overgenerate", "PreferenceDataParams": "porover.methods.porover.stage",
    "PreferenceOptimizationParams": "porover.stages.preference_optimization", "SFTParams": "porover.stages.sft",
    "TrainingParams": "porover.stages.training", "load_run_params": "porover.run_file",
    **dict.fromkeys(["agreement_figure", "candidates_per_prompt_figure", "ches_figure", "funnel_figure", "length_figure",
                     "loss_figure", "metrics_figure", "preference_figure", "prompt_refusal_share_figure",
                     "refusal_share_figure"], "porover.plots"),
    "run_evaluation": "porover.stages.evaluate", "run_overgeneration": "porover.stages.overgenerate",
    "build_pairs": "porover.methods.porover.stage", "run_preference_data": "porover.methods.porover.stage",
    "launch_command": "porover.stages.launch", "run_training": "porover.stages.launch",
    "load_sft_data": "porover.stages.sft", "run_sft": "porover.stages.sft",
    "load_pairs": "porover.stages.preference_optimization",
    "RefusalTokenParams": "porover.methods.refusal_tokens.stage", "tradeoff_curves": "porover.runs",
    "run_preference_optimization": "porover.stages.preference_optimization",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if importlib.util.find_spec(f"porover.{name}") is not None:  # a submodule: porover.stages, porover.judges...
        return importlib.import_module(f"porover.{name}")
    raise AttributeError(f"module 'porover' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
