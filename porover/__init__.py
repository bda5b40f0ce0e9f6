"""POROver Workbench: overgeneration and preference optimization against over-refusal, in notebooks."""

from porover.backends import RecordedBackend, VLLMBackend
from porover.data import known_datasets, load_prompts
from porover.evaluate import run_evaluation
from porover.generation import OpenAIBackend, Sampling, TransformersBackend, generate_responses
from porover.judges import JUDGES, Verdict, judge_refusals, xstest_string_match
from porover.metrics import compute_metrics, f1, metrics_table, score_group
from porover.models import device_settings, load_model, resolve_model
from porover.overgenerate import overgenerate, run_overgeneration
from porover.preference_data import build_pairs, run_preference_data
from porover.ches import ches_scores
from porover.params import PreferenceDataParams
from porover.plots import ches_figure, funnel_figure, prompt_refusal_share_figure
from porover.params import AnalysisParams, EvaluateParams, OvergenerateParams, load_run_params
from porover.plots import (agreement_figure, candidates_per_prompt_figure, length_figure, metrics_figure,
                           refusal_share_figure)
from porover.selection import CRITERIA, reward_scores, select, select_one
from porover.store import JsonlStore, read_jsonl, write_jsonl
from porover.params import PreferenceOptimizationParams, SFTParams
from porover.plots import loss_figure, preference_figure
from porover.training import (launch_command, load_pairs, load_sft_data, run_preference_optimization, run_sft,
                              run_training)

__all__ = [
    "AnalysisParams",
    "EvaluateParams", "JUDGES", "JsonlStore", "Sampling", "TransformersBackend", "Verdict",
    "compute_metrics", "device_settings", "f1", "generate_responses", "judge_refusals", "known_datasets",
    "load_model", "load_prompts", "load_run_params", "metrics_figure", "metrics_table", "read_jsonl",
    "resolve_model", "run_evaluation", "score_group", "write_jsonl", "xstest_string_match",
    "CRITERIA", "OpenAIBackend", "OvergenerateParams", "RecordedBackend", "VLLMBackend", "agreement_figure",
    "candidates_per_prompt_figure", "length_figure", "overgenerate", "refusal_share_figure", "reward_scores",
    "run_overgeneration", "select", "select_one",
    "PreferenceDataParams", "build_pairs", "ches_figure", "ches_scores", "funnel_figure",
    "prompt_refusal_share_figure", "run_preference_data",
    "PreferenceOptimizationParams", "SFTParams", "launch_command", "load_pairs", "load_sft_data", "loss_figure",
    "preference_figure", "run_preference_optimization", "run_sft", "run_training",
]
