"""POROver Workbench: overgeneration and preference optimization against over-refusal, in notebooks."""

from porover.backends import RecordedBackend, VLLMBackend
from porover.ches import ches_scores
from porover.data import known_datasets, load_prompts
from porover.evaluate import run_evaluation
from porover.generation import OpenAIBackend, Sampling, TransformersBackend, generate_responses
from porover.judges import JUDGES, Verdict, judge_csv, judge_refusals, judge_safety, xstest_string_match
from porover.metrics import compute_metrics, f1, metrics_table, score_group
from porover.models import device_settings, load_model, resolve_model
from porover.overgenerate import overgenerate, run_overgeneration
from porover.params import (AnalysisParams, EvaluateParams, OvergenerateParams, PreferenceDataParams,
                            PreferenceOptimizationParams, SFTParams, TrainingParams, load_run_params)
from porover.plots import (agreement_figure, candidates_per_prompt_figure, ches_figure, funnel_figure, length_figure,
                           loss_figure, metrics_figure, preference_figure, prompt_refusal_share_figure,
                           refusal_share_figure)
from porover.preference_data import build_pairs, run_preference_data
from porover.runner import run_pipeline
from porover.selection import CRITERIA, reward_scores, select, select_one
from porover.store import JsonlStore, read_jsonl, write_jsonl
from porover.training import (launch_command, load_pairs, load_sft_data, run_preference_optimization, run_sft,
                              run_training)

__all__ = [
    "AnalysisParams", "CRITERIA", "EvaluateParams", "JUDGES", "JsonlStore", "OpenAIBackend", "OvergenerateParams",
    "PreferenceDataParams", "PreferenceOptimizationParams", "RecordedBackend", "SFTParams", "Sampling",
    "TrainingParams", "TransformersBackend", "VLLMBackend", "Verdict", "agreement_figure", "build_pairs",
    "candidates_per_prompt_figure", "ches_figure", "ches_scores", "compute_metrics", "device_settings", "f1",
    "funnel_figure", "generate_responses", "judge_csv", "judge_refusals", "judge_safety", "known_datasets",
    "launch_command", "length_figure", "load_model", "load_pairs", "load_prompts", "load_run_params",
    "load_sft_data", "loss_figure", "metrics_figure", "metrics_table", "overgenerate", "preference_figure",
    "prompt_refusal_share_figure", "read_jsonl", "refusal_share_figure", "resolve_model", "reward_scores",
    "run_evaluation", "run_overgeneration", "run_pipeline", "run_preference_data", "run_preference_optimization",
    "run_sft", "run_training", "score_group", "select", "select_one", "write_jsonl", "xstest_string_match",
]
