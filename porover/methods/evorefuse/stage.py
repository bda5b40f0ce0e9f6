"""The EvoRefuse stage: evolve benign seed prompts until the target (the student) over-refuses them.

Per seed and iteration (the loop of Wu et al.'s ``framework/evorefuse.py``; pieces in `porover.methods.evorefuse`):

1. **Mutate** the current instruction with the nine strategies in order until ``n_mutants`` (L) mutants pass
   the safety filter (at most ``max_mutation_rounds`` passes over the nine: the authors loop forever).
2. **Fitness** of every safe mutant, and a fresh estimate for the current instruction, from
   ``fitness_samples`` (K) responses of the target: the paper's or the authors' code's form (``fitness``).
3. **Recombine** two of the top-L mutants at random, ``n_recombinations`` (N) times; safety-filter; fitness.
4. **Accept** the best candidate by simulated annealing, τ_i = max(τ_f, τ_0 − β·i).

The mutator, recombiner and safety judge are an LLM through any backend (OpenAI-compatible endpoint, vLLM,
in-process transformers; every call cached on disk, so a re-run re-asks nothing) or the offline operators
(one per strategy, `porover.methods.evorefuse.OFFLINE_OPERATORS`) with the offline safety rule: the seed is labelled
safe and its text is still there, verbatim. Every row says which mutator made it.

Outputs: ``evolved.jsonl`` (what ``stage:NAME`` stands for: one evolved prompt per seed that changed, a prompt
file `porover.data.load_rows` reads, with its lineage), ``candidates.jsonl`` (every candidate of every
iteration with parents, strategy, safety verdict, fitness terms and acceptance), ``steps.jsonl`` (one annealing
decision per seed and iteration) and ``summary.json`` (the target's refusal rate on seeds vs evolved prompts,
lexical diversity, fitness by iteration, counts). Append-only stores make a killed run resume.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from porover.config import EndpointParams, SpendingParams, StageParams, param
from porover.data import prompt_set_errors
from porover.digests import digest_of
from porover.judges import DEFAULT_JUDGE, judge_errors
from porover.methods import evorefuse as evo
from porover.methods.evorefuse.loop import final_prompts, run_iteration, seed_key
from porover.methods.evorefuse.mutator import Mutator
from porover.methods.evorefuse.target import Target, share
from porover.models import model_errors
from porover.spending import metered
from porover.store import JsonlStore, write_jsonl

NOTEBOOK = "08_evolve.ipynb"
OUTPUTS = ("evolved.jsonl", "candidates.jsonl", "steps.jsonl", "summary.json")  # the first: ``stage:NAME``

MUTATOR_BACKENDS = ("offline", "openai", "vllm", "transformers")


@dataclass
class EvolveParams(StageParams, EndpointParams, SpendingParams):
    """Parameters of ``notebooks/08_evolve.ipynb``: EvoRefuse against the target model.

    The endpoint settings (base_url, api_key_env, ...) are the mutator's, recombiner's and safety judge's.
    """

    seeds: dict[str, int | None] = param({"or_bench_hard:train": 12},
                                         "seed prompt sets name[:split] -> number (null = all); benign look-alikes",
                                         input=True)
    exclude: dict[str, int | None] = param({}, "prompt sets the seeds must not come from (evaluation sets), dropped "
                                               "by normalised text", input=True)
    target: str = param("smollm2-135m-instruct", "model whose refusals are maximised (stage:sft in a run)", input=True)
    mutator_backend: str = param("offline", "offline operators, or an LLM via openai, vllm or transformers",
                                 choices=MUTATOR_BACKENDS)
    mutator: str = param("gpt-4o", "mutator / recombiner / safety-judge model (not used offline)")
    mutator_temperature: float = param(0.01, "mutator sampling temperature (the authors: 0.01)", ge=0)
    mutator_max_new_tokens: int = param(256, "mutator reply budget", ge=1)
    safety_filter: str = param("auto", "auto (offline: rule, else llm), rule, llm or none",
                               choices=("auto", "rule", "llm", "none"))
    strategies: list[str] = param(list(evo.STRATEGY_NAMES), "mutation strategies, in the order they are tried")
    strategy_order: str = param("fixed", "fixed: each iteration starts at the first strategy (the authors); rotate: "
                                         "seed j starts at strategy j, then continues after the last one tried",
                                choices=("fixed", "rotate"))
    iterations: int = param(5, "I: iterations per seed", ge=1)
    n_mutants: int = param(4, "L: safe mutants per iteration (also the top-L recombined)", ge=1)
    n_recombinations: int = param(2, "N: recombinations per iteration", ge=0)
    max_mutation_rounds: int = param(3, "passes over the strategies while fewer than L mutants are safe", ge=1)
    tau0: float = param(0.1, "τ_0: initial annealing temperature", gt=0)
    beta: float = param(0.005, "β: cooling per iteration", ge=0)
    tau_final: float = param(0.05, "τ_f: lowest temperature", gt=0)
    fitness: str = param("paper", "paper: mean log P(refusal|y) + λ·mean token log p(y|x,s); code: the authors' code",
                         choices=evo.FITNESS_FORMS)
    fitness_lambda: float = param(0.03, "λ of the paper form", ge=0)
    fitness_samples: int = param(10, "K: target responses per fitness estimate", ge=1)
    p_floor: float = param(1e-4, "smallest P(refusal) taken into the log (paper form)", gt=0, lt=1)
    target_system_prompt: str = param(evo.SAFETY_PRIOR, "the target's system prompt s in fitness runs ('' = none; "
                                                        "the code form's confidence run never has one)")
    target_temperature: float = param(0.7, "target sampling temperature in fitness runs (the authors: 0.01)", ge=0)
    target_top_p: float = param(0.95, "target nucleus sampling mass", gt=0, le=1)
    target_max_new_tokens: int = param(48, "target response budget in fitness runs", ge=1)
    refusal_judge: str = param(DEFAULT_JUDGE, "refusal judge; its P(refusal) (Verdict.score) is p̂(r|y)")
    refusal_judge_settings: dict = param({}, "its settings")
    partial_is_refusal: bool = param(True, "a partial refusal counts as a refusal (labels, code form, rates)")
    final: str = param("last", "evolved prompt per seed: last accepted (the authors' code) or best accepted",
                       choices=("last", "best"))
    max_prompt_chars: int = param(1000, "longer candidates are rejected", ge=20)
    eval_max_new_tokens: int = param(64, "greedy budget of the seeds-vs-evolved refusal rates (no system prompt)",
                                     ge=1)
    batch_size: int = param(32, "target prompts per generate call", ge=1)
    stage_name: str = param("evolve", "name of this stage in the run")

    def problems(self, where: str) -> list[str]:
        errors = prompt_set_errors(self.seeds, f"{where}.seeds") + prompt_set_errors(self.exclude, f"{where}.exclude")
        if not self.seeds:
            errors.append(f"{where}.seeds: give at least one set of seed prompts")
        errors += model_errors(self.target, f"{where}.target")
        unknown = [s for s in self.strategies if s not in evo.STRATEGY_NAMES]
        if unknown or not self.strategies:
            errors.append(f"{where}.strategies: expected names among {', '.join(evo.STRATEGY_NAMES)}, got "
                          f"{unknown or 'none'}")
        if self.mutator_backend == "offline" and self.safety_filter == "llm":
            errors.append(f"{where}.safety_filter: the llm safety judge needs an LLM mutator_backend (it is the same "
                          "model); offline, use rule")
        if self.mutator_backend == "transformers":
            errors += model_errors(self.mutator, f"{where}.mutator")
        if self.n_recombinations and self.n_mutants < 2:
            errors.append(f"{where}.n_recombinations: recombination needs n_mutants >= 2")
        if self.fitness_samples > 1 and self.target_temperature == 0:
            errors.append(f"{where}.target_temperature: greedy decoding makes all K={self.fitness_samples} responses "
                          "the same; set it > 0 or fitness_samples: 1")
        if self.tau_final > self.tau0:
            errors.append(f"{where}.tau_final: above tau0 ({self.tau0}); the schedule would never cool")
        errors += judge_errors(self.refusal_judge, self.refusal_judge_settings, f"{where}.refusal_judge")
        return errors + self.endpoint_problems(where)

    def environment_problems(self, where: str) -> list[str]:
        return self.key_problems(where, [self.mutator_backend])

    @property
    def uses_llm(self) -> bool:
        return self.mutator_backend != "offline"

    @property
    def filter_mode(self) -> str:
        return ("llm" if self.uses_llm else "rule") if self.safety_filter == "auto" else self.safety_filter


# --- Running the stage -----------------------------------------------------------------------------------------


def load_seeds(params: EvolveParams) -> tuple[list[dict], list[dict]]:
    """The seed rows, and those dropped because their text is in an ``exclude`` set."""
    from porover.splits import hold_out, load_sets

    return hold_out(load_sets(params.seeds, params.seed, "seed"), params.exclude, params.seed, "drop")


@metered  # under the stage's cost cap (porover.spending)
def run_evolution(params: EvolveParams) -> tuple[list[dict], dict]:
    """Evolve every seed; write the outputs (see the module docstring). Returns ``(evolved rows, summary)``."""
    start = time.perf_counter()
    out = params.stage_dir
    seeds, dropped = load_seeds(params)
    if not seeds:
        raise ValueError(f"no seed left ({len(dropped)} dropped as excluded prompts); give other `seeds`")
    mutator, target = Mutator(params), Target(params)
    settings = digest_of([params.seeds, params.exclude, target.config, mutator.name, params.safety_filter,
                          params.strategies, params.strategy_order, params.n_mutants, params.n_recombinations,
                          params.max_mutation_rounds, params.tau0, params.beta, params.tau_final, params.seed,
                          params.max_prompt_chars, params.mutator_temperature, params.mutator_max_new_tokens])
    log = JsonlStore(out / "candidate_log.jsonl", key=lambda r: (r["settings"], r["candidate_id"]))
    steps = JsonlStore(out / "step_log.jsonl", key=lambda r: (r["settings"], r["seed_key"], r["iteration"]))
    # rotate: seed j starts at strategy j (mod 9), so a few iterations over many seeds use every strategy.
    state = {seed_key(s): {"text": s["prompt"], "candidate_id": f"{seed_key(s)}/seed",
                       "pointer": j % len(params.strategies) if params.strategy_order == "rotate" else 0}
             for j, s in enumerate(seeds)}
    for i in range(params.iterations):
        done = {r["seed_key"]: r for r in steps.rows if r["settings"] == settings and r["iteration"] == i}
        todo = [s for s in seeds if seed_key(s) not in done]
        if todo:
            run_iteration(params, i, todo, state, mutator, target, log, steps, settings)
            done = {r["seed_key"]: r for r in steps.rows if r["settings"] == settings and r["iteration"] == i}
        for key, row in done.items():
            state[key] = {"text": row["next_text"], "candidate_id": row["next_candidate_id"], "pointer": row["pointer"]}
    candidates = [r for r in log.rows if r["settings"] == settings]
    decisions = [r for r in steps.rows if r["settings"] == settings]
    evolved = final_prompts(params, seeds, candidates, decisions)
    summary = summarize(params, seeds, evolved, candidates, decisions, target)
    summary.update(seconds=round(time.perf_counter() - start, 1), mutator=mutator.name, llm_calls=mutator.calls,
                   dropped_as_excluded=len(dropped), target_generations=target.generated,
                   seconds_by_phase={k: round(v, 1) for k, v in target.seconds.items()})
    chosen = {r["chosen_candidate_id"]: r for r in decisions if r.get("chosen_candidate_id")}
    accepted = {r["next_candidate_id"] for r in decisions if r["accepted"]}
    write_jsonl(out / "candidates.jsonl", [{**{k: v for k, v in c.items() if k != "settings"},
                                            "best_of_iteration": c["candidate_id"] in chosen,
                                            "accepted": c["candidate_id"] in accepted} for c in candidates])
    write_jsonl(out / "steps.jsonl", [{k: v for k, v in d.items() if k != "settings"} for d in decisions])
    write_jsonl(out / "evolved.jsonl", evolved)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    if not evolved:
        raise ValueError("no seed evolved: every iteration kept its seed (see steps.jsonl and summary.json counts)")
    return evolved, summary



def refusal_rates(params: EvolveParams, target: Target, seeds: list[dict], evolved: list[dict]) -> dict:
    """The target's greedy refusal rate (no system prompt, as the evaluate stage) on seeds and evolved prompts."""
    from porover.generation import Sampling, generate_responses, response_key
    from porover.judges import judge_refusals
    from porover.vocabulary import is_refusal

    start = time.perf_counter()
    rows = [{"source": "seed", "id": seed_key(s), "prompt": s["prompt"]} for s in seeds]
    rows += [{"source": "evolved", "id": e["id"], "prompt": e["prompt"], "seed_key": f"{e['seed_source']}/{e['seed_id']}"}
             for e in evolved]
    sampling = Sampling(max_new_tokens=params.eval_max_new_tokens, temperature=0.0, seed=params.seed)
    store = JsonlStore(params.stage_dir / "generations" / f"{digest_of([target.digest, str(sampling)])}.jsonl",
                       key=response_key)
    done = generate_responses(target.backend() if any(response_key(r) not in store for r in rows) else None, rows,
                              store, sampling, desc=f"{params.stage_name}: refusal rates")
    verdicts = judge_refusals([d["prompt"] for d in done], [d["response"] for d in done], judge=params.refusal_judge,
                              **params.refusal_judge_settings)
    target.seconds["rates"] += time.perf_counter() - start
    refused = {(d["source"], d["id"]): is_refusal(v.label, params.partial_is_refusal) for d, v in zip(done, verdicts)}
    seed_all = share([refused[("seed", seed_key(s))] for s in seeds])
    paired = [e for e in evolved]
    seed_paired = share([refused[("seed", f"{e['seed_source']}/{e['seed_id']}")] for e in paired])
    evo_rate = share([refused[("evolved", e["id"])] for e in paired])
    return {"seeds_all": seed_all, "seeds_with_an_evolved_prompt": seed_paired, "evolved": evo_rate,
            "lift": None if evo_rate is None or seed_paired is None else evo_rate - seed_paired,
            "n_seeds": len(seeds), "n_evolved": len(paired), "judge": params.refusal_judge,
            "max_new_tokens": params.eval_max_new_tokens}


def summarize(params: EvolveParams, seeds: list[dict], evolved: list[dict], candidates: list[dict],
              decisions: list[dict], target: Target) -> dict:
    """Counts, acceptance, fitness by iteration, per-strategy yield, lexical diversity and refusal rates."""
    from collections import Counter

    mutants = [c for c in candidates if c["role"] in ("mutant", "recombinant")]
    by_iteration = []
    for i in range(params.iterations):
        mine = [d for d in decisions if d["iteration"] == i]
        if mine:
            by_iteration.append({
                "iteration": i, "tau": mine[0]["tau"],
                "mean_current_fitness": sum(d["current_fitness"] for d in mine) / len(mine),
                "mean_best_candidate_fitness": _mean([d["chosen_fitness"] for d in mine]),
                "mean_next_fitness": sum(d["next_fitness"] for d in mine) / len(mine),
                "accepted": sum(d["accepted"] for d in mine), "seeds": len(mine)})
    per_strategy = {}
    for name in [*params.strategies, "recombination"]:
        mine = [c for c in mutants if c["strategy"] == name]
        if mine:
            per_strategy[name] = {"tried": len(mine), "parsed": sum(c["rewrite_status"] == "parsed" for c in mine),
                                  "safe": sum(c["safety"] == "safe" for c in mine),
                                  "best_of_iteration": sum(c["candidate_id"] in {d["chosen_candidate_id"] for d in decisions}
                                                           for c in mine),
                                  "accepted": sum(c["candidate_id"] in {d["next_candidate_id"] for d in decisions
                                                                        if d["accepted"]} for c in mine)}
    return {
        "seeds": len(seeds), "evolved": len(evolved), "unchanged_seeds": len(seeds) - len(evolved),
        "fitness": params.fitness, "safety_filter": params.filter_mode, "iterations": params.iterations,
        "candidates": len(mutants),
        "rewrite_status": dict(Counter(c["rewrite_status"] for c in mutants)),
        "malformed_rewrites": sum(c["rewrite_status"] not in ("parsed",) for c in mutants),
        "safety_verdicts": dict(Counter(str(c["safety"]) for c in mutants if c["rewrite_status"] == "parsed")),
        "accepted_steps": sum(d["accepted"] for d in decisions), "steps": len(decisions),
        "by_iteration": by_iteration, "per_strategy": per_strategy,
        "lexical_diversity": {"seeds": evo.lexical_diversity([s["prompt"] for s in seeds]),
                              "evolved": evo.lexical_diversity([e["prompt"] for e in evolved])},
        "refusal_rate": refusal_rates(params, target, seeds, evolved),
    }


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
