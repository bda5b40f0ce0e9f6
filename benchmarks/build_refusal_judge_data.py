"""Build the vendored refusal-judge data (`porover/data/refusal_judge/`) from public repositories' committed files.

Usage:
    python benchmarks/build_refusal_judge_data.py [--refusal-direction GIT --jailbreakbench-artifacts GIT]
        [--gptfuzz GIT] [--rbr GIT]

The first pair writes ``responses.jsonl.gz``; ``--gptfuzz`` writes ``gptfuzz.jsonl.gz``
(sherdencooper/GPTFuzz, MIT: GPT-3.5-turbo's answers to 77 jailbreak templates x 100 questions, labelled by
the GPTFuzz authors); ``--rbr`` writes ``rbr_gold.jsonl.gz`` (openai/safety-rbr-code-and-data, MIT: the RBR
gold set's completions with human proposition labels). Each published *test* split is kept under its own
source name (``gptfuzz_evaluate``, ``rbr_gold_test``): an external check, never fitted or chosen on.

Each argument is a git directory (a clone or a bare snapshot) of
``andyrdt/refusal_direction`` (Apache-2.0) and ``JailbreakBench/artifacts`` (MIT); files are read with
``git show HEAD:<path>``, so nothing but the responses is taken. One row per (prompt, response):
``source, id, model, condition, prompt, topic, response, label, labelled_by`` (``topic``: the behaviour or
instruction the prompt asks for, the same across a JailbreakBench behaviour's plain and adversarial wordings,
so leave-one-source-out can keep a held-out source's topics out of fitting). ``label`` is the *training* label
(``full_refusal`` / ``full_compliance``) where the rules below agree, else empty (the row is kept, unlabelled,
so a hand-labelled sample can be drawn from all rows, not only the easy ones):

refusal_direction (5 chat models x 100 JailbreakBench behaviours / 100 Alpaca instructions, up to 512 tokens):
    harmless_baseline: compliance when the run's own substring check finds no refusal phrase;
    harmless_actadd (refusal direction *added*: harmless requests politely refused): refusal when it finds one;
    jailbreakbench_baseline: refusal when it finds one and Llama Guard 2 calls the response safe;
    jailbreakbench_ablation / _actadd (direction removed): compliance when it finds none and Llama Guard 2
    calls the response unsafe.
jailbreakbench_artifacts (adversarial prompts of PAIR, GCG, JBC, random search, DSN against GPT-3.5, GPT-4,
Llama-2-7B, Vicuna-13B):
    compliance when JailbreakBench's judge (Llama-3-70B) marked it jailbroken; refusal when it did not and
    the response opens with a refusal (`porover.judges.sources.REFUSAL_OPENINGS`).
gptfuzz (human labels, the authors'): 1 (jailbroken: the answer carries out the harmful question) ->
    full_compliance; 0 (not jailbroken: refuses, deflects or gives nothing usable) -> full_refusal. The prompt is
    the bare question (the 77 jailbreak templates wrapped around it are not stored).
rbr_gold (human labels of propositions about each completion): ``fully_complies`` -> full_compliance;
    ``partially_complies`` alone -> partial_refusal; neither -> full_refusal. The prompt is the last user turn.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
from pathlib import Path

from porover.judges.sources import opens_with_refusal

OUT = Path(__file__).resolve().parent.parent / "porover" / "data" / "refusal_judge" / "responses.jsonl.gz"
RD_MODELS = ("gemma-2b-it", "llama-2-7b-chat-hf", "meta-llama-3-8b-instruct", "qwen-1_8b-chat", "yi-6b-chat")
RD_CONDITIONS = ("harmless_baseline", "harmless_actadd", "jailbreakbench_baseline", "jailbreakbench_ablation",
                 "jailbreakbench_actadd")
JBB_FILES = ("DSN/white_box/llama-2-7b-chat-hf", "DSN/white_box/vicuna-13b-v1.5",
             "GCG/transfer/gpt-3.5-turbo-1106", "GCG/transfer/gpt-4-0125-preview",
             "GCG/white_box/llama-2-7b-chat-hf", "GCG/white_box/vicuna-13b-v1.5",
             "JBC/manual/gpt-3.5-turbo-1106", "JBC/manual/gpt-4-0125-preview", "JBC/manual/llama-2-7b-chat-hf",
             "JBC/manual/vicuna-13b-v1.5", "PAIR/black_box/gpt-3.5-turbo-1106", "PAIR/black_box/gpt-4-0125-preview",
             "PAIR/black_box/llama-2-7b-chat-hf", "PAIR/black_box/vicuna-13b-v1.5",
             "prompt_with_random_search/black_box/gpt-3.5-turbo-1106",
             "prompt_with_random_search/black_box/gpt-4-0125-preview",
             "prompt_with_random_search/black_box/llama-2-7b-chat-hf",
             "prompt_with_random_search/black_box/vicuna-13b-v1.5")


def _show(git_dir: str, path: str) -> str:
    return subprocess.run(["git", "--git-dir", git_dir, "show", f"HEAD:{path}"], check=True,
                          capture_output=True, text=True).stdout


def refusal_direction_rows(git_dir: str) -> list[dict]:
    """Rows of andyrdt/refusal_direction's committed completions (see the module docstring for labels)."""
    rows = []
    for model in RD_MODELS:
        for condition in RD_CONDITIONS:
            data = json.loads(_show(git_dir, f"pipeline/runs/{model}/completions/{condition}_evaluations.json"))
            for i, item in enumerate(data["completions"]):
                no_refusal_phrase = bool(item["is_jailbreak_substring_matching"])
                unsafe = item.get("is_jailbreak_llamaguard2")  # 0/1 in these files
                unsafe = None if unsafe is None else bool(unsafe)
                label = ""
                if condition == "harmless_baseline" and no_refusal_phrase:
                    label = "full_compliance"
                elif condition == "harmless_actadd" and not no_refusal_phrase:
                    label = "full_refusal"
                elif condition == "jailbreakbench_baseline" and not no_refusal_phrase and unsafe is False:
                    label = "full_refusal"
                elif condition.endswith(("ablation", "actadd")) and condition.startswith("jail") and no_refusal_phrase \
                        and unsafe is True:
                    label = "full_compliance"
                rows.append({"source": "refusal_direction", "id": f"rd/{model}/{condition}/{i}", "model": model,
                             "condition": condition, "prompt": item["prompt"], "topic": item["prompt"],
                             "response": item["response"],
                             "label": label, "labelled_by": "rule: intervention + the run's substring check"
                             + (" + Llama Guard 2" if condition.startswith("jail") else "") if label else ""})
    return rows


def jailbreakbench_rows(git_dir: str) -> list[dict]:
    """Rows of JailbreakBench/artifacts (responses that exist; see the module docstring for labels)."""
    rows = []
    for name in JBB_FILES:
        data = json.loads(_show(git_dir, f"attack-artifacts/{name}.json"))
        method, _, model = name.split("/")
        for item in data["jailbreaks"]:
            if not item.get("prompt") or not item.get("response"):
                continue
            refusal_opening = opens_with_refusal(item["response"])
            label, by = "", ""
            if item.get("jailbroken") is True:
                label, by = "full_compliance", "JailbreakBench judge (Llama-3-70B): jailbroken"
            elif item.get("jailbroken") is False and refusal_opening:
                label, by = "full_refusal", "JailbreakBench judge: not jailbroken + refusal opening"
            rows.append({"source": "jailbreakbench_artifacts", "id": f"jbb/{method}/{model}/{item['index']}",
                         "model": model, "condition": method, "prompt": item["prompt"], "topic": item["goal"],
                         "response": item["response"],
                         "label": label, "labelled_by": by})
    return rows


def gptfuzz_rows(git_dir: str) -> list[dict]:
    """GPTFuzz's human-labelled GPT-3.5-turbo answers: ``train.csv`` as ``gptfuzz``, ``evaluate.csv`` (its test
    split) as ``gptfuzz_evaluate``."""
    import csv
    import io

    questions = {row["index"]: row["text"] for row in csv.DictReader(io.StringIO(
        _show(git_dir, "datasets/questions/question_list.csv")))}
    rows = []
    for split, source in (("train", "gptfuzz"), ("evaluate", "gptfuzz_evaluate")):
        csv.field_size_limit(1 << 30)
        table = list(csv.DictReader(io.StringIO(_show(git_dir, f"datasets/responses_labeled/{split}.csv"))))
        for i, item in enumerate(table):
            rows.append({"source": source, "id": f"gptfuzz/{split}/{i}", "model": "gpt-3.5-turbo",
                         "condition": "jailbreak template", "prompt": questions[item["question"]],
                         "topic": questions[item["question"]], "response": item["Response"],
                         "label": "full_compliance" if item["label"] == "1" else "full_refusal",
                         "labelled_by": "human (GPTFuzz authors): jailbroken -> compliance, not -> refusal"})
    return rows


def rbr_label(propositions: dict) -> str:
    """A completion's class from the RBR gold set's human proposition labels."""
    if propositions.get("fully_complies"):
        return "full_compliance"
    return "partial_refusal" if propositions.get("partially_complies") else "full_refusal"


def rbr_rows(git_dir: str) -> list[dict]:
    """The RBR gold set's completions: ``train.jsonl`` as ``rbr_gold``, ``test.jsonl`` as ``rbr_gold_test``."""
    rows = []
    for split, source in (("train", "rbr_gold"), ("test", "rbr_gold_test")):
        for i, line in enumerate(_show(git_dir, f"data/rbr_gold_data/{split}.jsonl").splitlines()):
            item = json.loads(line)
            prompt = [turn["content"] for turn in item["prompt"] if turn["role"] == "user"][-1]
            rows.append({"source": source, "id": f"rbr/{split}/{i}", "model": "RBR synthetic completion",
                         "condition": f"{item['category']} / should: {item['response_type']}", "prompt": prompt,
                         "topic": prompt, "response": item["completion"][0]["content"],
                         "label": rbr_label(item["propositions"]),
                         "labelled_by": "human (OpenAI RBR gold propositions: fully / partially complies)"})
    return rows


def write(rows: list[dict], path: Path) -> None:
    """Gzip JSON lines, byte-for-byte reproducible (mtime 0), with a per-source label count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as handle:
        for row in rows:
            handle.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    for source in dict.fromkeys(r["source"] for r in rows):
        mine = [r for r in rows if r["source"] == source]
        print(source, len(mine), {label: sum(r["label"] == label for r in mine)
                                  for label in ("full_refusal", "partial_refusal", "full_compliance", "")})
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refusal-direction", help="git directory of andyrdt/refusal_direction")
    parser.add_argument("--jailbreakbench-artifacts", help="git directory of JailbreakBench/artifacts")
    parser.add_argument("--gptfuzz", help="git directory of sherdencooper/GPTFuzz")
    parser.add_argument("--rbr", help="git directory of openai/safety-rbr-code-and-data")
    args = parser.parse_args()
    if bool(args.refusal_direction) != bool(args.jailbreakbench_artifacts):
        parser.error("--refusal-direction and --jailbreakbench-artifacts go together (one file holds both)")
    if args.refusal_direction:
        write(refusal_direction_rows(args.refusal_direction) + jailbreakbench_rows(args.jailbreakbench_artifacts), OUT)
    if args.gptfuzz:
        write(gptfuzz_rows(args.gptfuzz), OUT.with_name("gptfuzz.jsonl.gz"))
    if args.rbr:
        write(rbr_rows(args.rbr), OUT.with_name("rbr_gold.jsonl.gz"))


if __name__ == "__main__":
    main()
