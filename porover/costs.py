"""What a run file would cost at full scale, per stage, before anything runs: worst-case endpoint calls and
tokens, dollars at the file's prices, and GPU hours at a stated (or measured) throughput.

`estimate_costs` needs no model and no network: prompt counts come from the file (a set given as ``null`` is
counted from the vendored copy; a hub set without a count is unknown), input tokens from the prompts' text at
`CHARS_PER_TOKEN`, outputs at their full token budgets (worst case: every generation runs to its limit).
Prices are the file's ``price_per_1m_input`` / ``price_per_1m_output``, applied to every call to the same
endpoint model (the paper file prices GPT-4o once, in ``overgenerate``). GPU hours divide the tokens a stage
trains on or generates by `Throughput`, whose defaults are stated assumptions, not measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

CHARS_PER_TOKEN = 4.0  # English text in Llama 3's and GPT-4o's tokenizers: about four characters per token
HUB_PROMPT_TOKENS = 40  # a prompt of a hub set, which is not read here
JUDGE_OUTPUT_TOKENS = 16  # XSTest's judge budget (porover.judges.llm.STYLES)


@dataclass(frozen=True)
class Throughput:
    """Tokens per second per GPU that GPU hours are computed with; the defaults are assumptions for an 8B model
    on H100-class GPUs (989 dense bf16 TFLOP/s): 40% MFU at 6N FLOPs per trained token (full fine-tuning;
    LoRA 4N; DPO adds the reference forward, 2N, at every step or once when precomputed) and ~7,000 generated tokens/s per GPU for batched
    ``generate`` in bf16 (memory-bound: 16 GB of weights read per step at ~3.3 TB/s, batch 64, half efficiency).
    Replace them with `benchmarks/gpu_paper_scale.py`'s measurements."""

    peak_tflops: float = 989.0
    mfu: float = 0.4
    params_billion: float = 8.0
    generate_tokens_per_s: float = 7000.0

    def train_tokens_per_s(self, flops_per_param: float) -> float:
        return self.peak_tflops * 1e12 * self.mfu / (flops_per_param * self.params_billion * 1e9)


@dataclass
class StageCost:
    """One stage's full-scale estimate (None: unknown, see ``notes``)."""

    stage: str
    type: str
    api_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float | None = None
    train_tokens: int = 0
    generated_tokens: int = 0
    gpu_hours: float = 0.0
    notes: list[str] = field(default_factory=list)


@lru_cache(maxsize=None)
def _set_size(name: str) -> tuple[int | None, float]:
    """Rows and mean prompt tokens of a vendored set (None rows: not vendored, e.g. a hub set)."""
    from porover.data import known_datasets, load_rows, split_name

    if split_name(name)[0] not in known_datasets():
        return None, HUB_PROMPT_TOKENS
    rows = load_rows(*([split_name(name)[0]] if split_name(name)[1] is None else [split_name(name)[0]]),
                     split=split_name(name)[1])
    return len(rows), sum(len(r["prompt"]) for r in rows) / max(len(rows), 1) / CHARS_PER_TOKEN


def prompt_count(sets: dict, outputs: dict[str, int], notes: list[str]) -> tuple[int, float]:
    """Prompts in a prompt-set mapping and their total tokens (``outputs``: earlier stages' prompt outputs)."""
    count, tokens = 0, 0.0
    for name, n in sets.items():
        if name.startswith("stage:"):
            size, mean = outputs.get(name[6:], 0), HUB_PROMPT_TOKENS
        else:
            size, mean = _set_size(name)
        if size is None and n is None:
            notes.append(f"{name}: size unknown (hub set without a count), counted as 0")
        rows = n if size is None else (size if n is None else min(n, size))
        count += rows or 0
        tokens += (rows or 0) * mean
    return count, tokens


def _judge_calls(cost: StageCost, settings: dict, judges: list[str], prompts: int, prompt_tokens: float,
                 response_tokens: int, prices: dict) -> None:
    """Endpoint judges (backend openai) over ``prompts`` responses of up to ``response_tokens`` tokens each."""
    from porover.judges.llm import STYLES

    template = len(STYLES["xstest"][0] + (STYLES["xstest"][1] or "")) / CHARS_PER_TOKEN
    for judge in judges:
        one = settings.get(judge, settings) if judge in settings else settings
        if not isinstance(one, dict) or one.get("backend") != "openai":
            continue
        _calls(cost, one.get("model", ""), prompts, prompts * template + prompt_tokens + prompts * response_tokens,
               prompts * (one.get("max_new_tokens") or JUDGE_OUTPUT_TOKENS), prices)


def _calls(cost: StageCost, model: str, calls: int, input_tokens: float, output_tokens: int, prices: dict) -> None:
    cost.api_calls += int(calls)
    cost.input_tokens += int(input_tokens)
    cost.output_tokens += int(output_tokens)
    price = prices.get(model)
    if price is None:
        if calls:
            cost.notes.append(f"no price given for {model!r}")
        return
    cost.usd = (cost.usd or 0.0) + (input_tokens * price[0] + output_tokens * price[1]) / 1e6


def estimate_costs(run, throughput: Throughput = Throughput()) -> list[StageCost]:
    """Per stage of a validated run file (`porover.run_file.RunParams`), the worst-case full-scale cost.

    Args:
        run: The validated run file.
        throughput: GPU throughput assumptions (see `Throughput`).
    """
    prices = {}
    for stage in run.stages.values():
        p = stage.params
        prices.update({model: tuple(pair) for model, pair in (p.get("prices") or {}).items()})
        if p.get("price_per_1m_input") is not None or p.get("price_per_1m_output") is not None:
            prices[p.get("teacher")] = (p.get("price_per_1m_input") or 0.0, p.get("price_per_1m_output") or 0.0)
    outputs: dict[str, int] = {}  # stage -> prompts it hands on (evolved prompts, selected rows)
    costs = []
    for name, stage in run.stages.items():
        p, kind = stage.params, stage.type.name
        cost = StageCost(name, kind)
        generate = lambda prompts, budget, samples=1: prompts * budget * samples  # noqa: E731
        if kind == "overgenerate":
            prompts, tokens = prompt_count({**p["general_prompts"], **p["toxic_prompts"]}, outputs, cost.notes)
            if p["backend"] == "openai":
                _calls(cost, p["teacher"], prompts * p["n_samples"], tokens * p["n_samples"],
                       generate(prompts, p["max_new_tokens"], p["n_samples"]), prices)
            else:
                cost.generated_tokens += generate(prompts, p["max_new_tokens"], p["n_samples"])
            if p["safety_judge"] == "llama_guard":
                cost.generated_tokens += prompts * p["n_samples"] * 64  # Llama Guard's verdict budget
            outputs[name] = prompts
        elif kind in ("evaluate", "refusal_tokens"):
            prompts, tokens = prompt_count(p["benchmarks"], outputs, cost.notes)
            rounds = max(len(p.get("thresholds") or []), 1)
            cost.generated_tokens += generate(prompts, p["max_new_tokens"], rounds)
            _judge_calls(cost, p["judge_settings"], p["judges"], prompts * rounds, tokens * rounds,
                         p["max_new_tokens"], prices)
            if kind == "refusal_tokens":
                rows = outputs.get(str(p["data"]).removeprefix("stage:"), 0)
                extra, extra_tokens = prompt_count(p["extra_prompts"], outputs, cost.notes)
                cost.generated_tokens += generate(extra, p["teacher_max_new_tokens"])
                _judge_calls(cost, p["label_judge_settings"], [p["label_judge"]], rows + extra, extra_tokens,
                             p["teacher_max_new_tokens"], prices)
                _training(cost, p, rows + extra, throughput)
        elif kind == "evolve":
            seeds, tokens = prompt_count(p["seeds"], outputs, cost.notes)
            per_seed = p["iterations"] * (p["max_mutation_rounds"] * len(p["strategies"]) + p["n_recombinations"])
            if p["mutator_backend"] == "openai":
                from porover.methods.evorefuse.prompts import STRATEGIES, mutation_system

                # the system prompt: the authors' prefix, one strategy, their suffix (mean over the strategies)
                template = sum(len(mutation_system(s)) for s in STRATEGIES) / len(STRATEGIES) / CHARS_PER_TOKEN
                calls = seeds * per_seed * (2 if p["safety_filter"] in ("auto", "llm") else 1)  # rewrite + filter
                _calls(cost, p["mutator"], calls, calls * (template + tokens / max(seeds, 1)),
                       calls * p["mutator_max_new_tokens"], prices)
            cost.generated_tokens += generate(seeds * p["iterations"] * (p["n_mutants"] + 1),
                                              p["target_max_new_tokens"], p["fitness_samples"])
            outputs[name] = seeds
        elif kind == "preference_data":
            prompts, tokens = prompt_count(p["prompts"], outputs, cost.notes)
            anchors, anchor_tokens = prompt_count(p["safety_anchor_sets"], outputs, cost.notes)
            cost.generated_tokens += generate(prompts + anchors, p["max_new_tokens"], p["k"])
            judged = (prompts + anchors) * p["k"]
            _judge_calls(cost, {p["refusal_judge"]: p["refusal_judge_settings"]}, [p["refusal_judge"]], judged,
                         (tokens + anchor_tokens) * p["k"], p["max_new_tokens"], prices)
            if p["backend"] == "openai":  # worst case: every prompt over-refused, so every one goes to the teacher
                _calls(cost, p["teacher"], prompts * p["teacher_samples"], tokens * p["teacher_samples"],
                       generate(prompts, p["teacher_max_new_tokens"], p["teacher_samples"]), prices)
                _judge_calls(cost, {p["refusal_judge"]: p["refusal_judge_settings"]}, [p["refusal_judge"]],
                             prompts * p["teacher_samples"], tokens * p["teacher_samples"],
                             p["teacher_max_new_tokens"], prices)
            outputs[name] = prompts + anchors
        elif kind in ("sft", "preference_optimization", "mosr"):
            if kind == "mosr":
                rows = sum(prompt_count(p[f], outputs, cost.notes)[0] for f in ("benign", "pseudo_malicious", "malicious"))
            else:
                rows = outputs.get(str(p.get("data") or p.get("pairs")).removeprefix("stage:"), 0)
            _training(cost, p, rows, throughput, pairs=kind == "preference_optimization")
        elif kind in ("refusal_direction", "false_refusal"):  # the curve: one judged point per coefficient
            prompts, tokens = prompt_count(p["validation"], outputs, cost.notes)
            points = len(p["coefficients"]) + (kind == "refusal_direction")  # and the ablated weights
            cost.generated_tokens += generate(prompts, p["max_new_tokens"], points)
            _judge_calls(cost, p["judge_settings"], [p["judge"]], prompts * points, tokens * points,
                         p["max_new_tokens"], prices)
        elif kind == "dro":
            pairs = p["n_pairs"] or 100  # the authors' 100 harmful/harmless pairs
            responses = 2 * pairs * len(p["conditions"]) * p["n_samples"]
            cost.generated_tokens += responses * p["max_new_tokens"]
            _judge_calls(cost, p["judge_settings"], p["judges"], responses, responses * 30, p["max_new_tokens"], prices)
        cost.gpu_hours += cost.generated_tokens / throughput.generate_tokens_per_s / 3600
        costs.append(cost)
    return costs


def _training(cost: StageCost, p: dict, rows: int, throughput: Throughput, pairs: bool = False) -> None:
    """Worst-case trained tokens (every sequence at max_length) and their GPU hours."""
    epochs = p["num_train_epochs"] if p.get("max_steps", -1) < 0 else None
    if epochs is None:
        global_batch = p["per_device_train_batch_size"] * p["gradient_accumulation_steps"] * p["num_processes"]
        sequences = p["max_steps"] * global_batch
    else:
        sequences = rows * epochs
    tokens = int(sequences * p["max_length"] * (2 if pairs else 1))  # a pair is two sequences
    flops = 4.0 if p.get("lora") else 6.0
    if pairs:  # the reference forward (2N): once per pair when precomputed, else at every step
        precomputed = p.get("precompute_ref_log_probs") and not p.get("lora") and epochs
        flops += 2.0 / epochs if precomputed else 2.0
    cost.train_tokens += tokens
    cost.gpu_hours += tokens / throughput.train_tokens_per_s(flops) / 3600


def format_costs(costs: list[StageCost]) -> str:
    """A plain-text table of `estimate_costs`, with totals."""
    lines = [f"{'stage':24s} {'API calls':>10s} {'in tokens':>12s} {'out tokens':>12s} {'USD':>9s} {'GPU h':>8s}"]
    for c in costs:
        usd = "-" if c.usd is None else f"{c.usd:,.0f}"
        lines.append(f"{c.stage:24s} {c.api_calls:>10,d} {c.input_tokens:>12,d} {c.output_tokens:>12,d} {usd:>9s} "
                     f"{c.gpu_hours:>8.1f}" + (f"  ({'; '.join(dict.fromkeys(c.notes))})" if c.notes else ""))
    usd = sum(c.usd or 0 for c in costs)
    lines.append(f"{'total':24s} {sum(c.api_calls for c in costs):>10,d} {sum(c.input_tokens for c in costs):>12,d} "
                 f"{sum(c.output_tokens for c in costs):>12,d} {usd:>9,.0f} {sum(c.gpu_hours for c in costs):>8.1f}")
    lines.append("worst case: every generation at its full token budget; GPU hours at the stated throughput "
                 "(porover.costs.Throughput), not measured")
    return "\n".join(lines)
