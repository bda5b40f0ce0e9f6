"""One EvoRefuse iteration for many seeds in lockstep (mutate, fitness, recombine, accept), and the evolved
prompt each seed ends with. The stage `porover.methods.evorefuse.stage` drives it and writes the outputs."""

from __future__ import annotations

import random

from porover.methods.evorefuse.fitness import accept, acceptance_probability, annealing_temperature
from porover.methods.evorefuse.mutator import Mutator
from porover.methods.evorefuse.prompts import STRATEGIES
from porover.methods.evorefuse.target import Target
from porover.store import JsonlStore


def seed_key(seed: dict) -> str:
    """A seed's key in every store and row: ``source/id``."""
    return f"{seed['source']}/{seed['id']}"


def run_iteration(params, i: int, seeds: list[dict], state: dict, mutator: Mutator, target: Target,
                  log: JsonlStore, steps: JsonlStore, settings: str) -> None:
    """One EvoRefuse iteration for every seed in ``seeds``, in lockstep so the target's generations batch."""
    names = params.strategies
    safe: dict[str, list[dict]] = {seed_key(s): [] for s in seeds}
    rows: list[dict] = []
    pointer = {seed_key(s): state[seed_key(s)]["pointer"] if params.strategy_order == "rotate" else 0 for s in seeds}
    tried = {seed_key(s): 0 for s in seeds}
    for round_ in range(params.max_mutation_rounds):
        for _ in range(len(names)):
            active = [s for s in seeds if len(safe[seed_key(s)]) < params.n_mutants]
            if not active:
                break
            groups: dict[str, list[dict]] = {}
            for s in active:
                groups.setdefault(names[(pointer[seed_key(s)] + tried[seed_key(s)]) % len(names)], []).append(s)
            for strategy, group in groups.items():
                current = [state[seed_key(s)] for s in group]
                tags = [f"{seed_key(s)}/{i}/{strategy}" for s in group]
                rewrites = mutator.mutate(strategy, [c["text"] for c in current], tags, round_)
                parsed = [(s, c, r) for s, c, r in zip(group, current, rewrites) if r.instruction]
                verdicts = dict(zip([id(r) for _, _, r in parsed],
                                    mutator.judge([r for *_, r in parsed], [s for s, *_ in parsed])))
                for s, c, r in zip(group, current, rewrites):
                    key = seed_key(s)
                    tried[key] += 1
                    verdict, why = verdicts.get(id(r), (None, r.status))
                    if r.instruction and any(m["prompt"] == r.instruction for m in safe[key]):
                        verdict, why = None, "duplicate of an earlier safe mutant"
                    row = _candidate(params, s, i, "mutant", f"m{round_}.{strategy}", r, [c["candidate_id"]],
                                     strategy, mutator.name, verdict, why, settings)
                    rows.append(row)
                    if verdict == "safe" and len(safe[key]) < params.n_mutants:
                        safe[key].append(row)
    # Fitness of the safe mutants and a fresh estimate for each current instruction, in one batch.
    currents = {seed_key(s): {"draw": f"{settings}/{seed_key(s)}/{i}/current", "prompt": state[seed_key(s)]["text"]} for s in seeds}
    mutants = [m for ms in safe.values() for m in ms]
    fit = target.estimate([{"draw": m["draw"], "prompt": m["prompt"]} for m in mutants] + list(currents.values()))
    for m in mutants:
        m.update(fitness=fit[m["draw"]]["fitness"], fitness_terms=_terms(fit[m["draw"]]))
    # Recombination: two of the top-L mutants at random, N times, safety-filtered.
    recombinants = []
    jobs = []
    for s in seeds:
        top = sorted(safe[seed_key(s)], key=lambda m: -m["fitness"])[:params.n_mutants]
        rng = random.Random(f"{params.seed}/{seed_key(s)}/{i}/recombine")
        for n in range(params.n_recombinations if len(top) >= 2 else 0):
            jobs.append((s, n, rng.sample(top, 2)))
    if jobs:
        children = mutator.recombine([(a["prompt"], b["prompt"]) for _, _, (a, b) in jobs], [s["prompt"] for s, *_ in jobs],
                                     [f"{seed_key(s)}/{i}/r{n}" for s, n, _ in jobs])
        parsed = [(job, r) for job, r in zip(jobs, children) if r.instruction]
        verdicts = dict(zip([id(r) for _, r in parsed], mutator.judge([r for _, r in parsed], [j[0] for j, _ in parsed])))
        for (s, n, (a, b)), r in zip(jobs, children):
            verdict, why = verdicts.get(id(r), (None, r.status))
            row = _candidate(params, s, i, "recombinant", f"r{n}", r, [a["candidate_id"], b["candidate_id"]],
                             "recombination", mutator.name, verdict, why, settings)
            rows.append(row)
            if verdict == "safe":
                recombinants.append(row)
        fit.update(target.estimate([{"draw": r["draw"], "prompt": r["prompt"]} for r in recombinants]))
        for r in recombinants:
            r.update(fitness=fit[r["draw"]]["fitness"], fitness_terms=_terms(fit[r["draw"]]))
    # Current instructions, as rows too (their fresh fitness estimate is what x' is compared with).
    for s in seeds:
        c = currents[seed_key(s)]
        rows.append({**_base(s, i, "current", "c", settings), "candidate_id": state[seed_key(s)]["candidate_id"] + f"@{i}",
                     "prompt": c["prompt"], "parents": [state[seed_key(s)]["candidate_id"]], "strategy": None,
                     "mutator": None, "rewrite_status": None, "reason": None, "safety": None, "safety_why": None,
                     "draw": c["draw"], "fitness": fit[c["draw"]]["fitness"], "fitness_terms": _terms(fit[c["draw"]])})
    log.append(rows)
    tau = annealing_temperature(i, params.tau0, params.beta, params.tau_final)
    decisions = []
    for s in seeds:
        key = seed_key(s)
        pool = [r for r in safe[key] + [x for x in recombinants if x["seed_key"] == key]]
        current_f = fit[currents[key]["draw"]]["fitness"]
        u = random.Random(f"{params.seed}/{key}/{i}/accept").random()
        best = max(pool, key=lambda r: r["fitness"]) if pool else None
        accepted = best is not None and accept(best["fitness"], current_f, tau, u)
        decisions.append({
            "settings": settings, "seed_key": key, "iteration": i, "tau": tau, "u": u,
            "current_text": state[key]["text"], "current_candidate_id": state[key]["candidate_id"],
            "current_fitness": current_f, "chosen_candidate_id": best["candidate_id"] if best else None,
            "chosen_fitness": best["fitness"] if best else None, "chosen_text": best["prompt"] if best else None,
            "p_accept": acceptance_probability(best["fitness"], current_f, tau) if best else None,
            "accepted": accepted, "safe_mutants": len(safe[key]),
            "next_text": best["prompt"] if accepted else state[key]["text"],
            "next_candidate_id": best["candidate_id"] if accepted else state[key]["candidate_id"],
            "next_fitness": best["fitness"] if accepted else current_f,
            "pointer": (pointer[key] + tried[key]) % len(names)})
    steps.append(decisions)


def _base(seed: dict, i: int, role: str, index: str, settings: str) -> dict:
    return {"settings": settings, "seed_key": seed_key(seed), "seed_source": seed["source"], "seed_id": seed["id"],
            "seed_prompt": seed["prompt"], "category": seed.get("category"), "iteration": i, "role": role, "index": index}


def _candidate(params, seed, i, role, index, rewrite, parents, strategy, mutator_name, verdict, why, settings) -> dict:
    base = _base(seed, i, role, index, settings)
    cid = f"{seed_key(seed)}/i{i}/{index}"
    family = next((s.family for s in STRATEGIES if s.name == strategy), "recombination")
    return {**base, "candidate_id": cid, "prompt": rewrite.instruction, "parents": parents, "strategy": strategy,
            "family": family, "mutator": f"offline:{strategy}" if mutator_name == "offline" else mutator_name,
            "rewrite_status": rewrite.status, "reason": rewrite.reason, "raw_reply": rewrite.raw or None,
            "safety": verdict, "safety_why": why, "draw": f"{settings}/{cid}", "fitness": None, "fitness_terms": None}


def _terms(found: dict) -> dict:
    return {k: v for k, v in found.items() if k not in ("config", "draw", "prompt", "fitness")}


def final_prompts(params, seeds: list[dict], candidates: list[dict], decisions: list[dict]) -> list[dict]:
    """One evolved prompt per seed whose instruction changed: the last accepted, or the best accepted one."""
    by_id = {c["candidate_id"]: c for c in candidates}
    evolved = []
    for s in seeds:
        key = seed_key(s)
        mine = sorted([d for d in decisions if d["seed_key"] == key and d["accepted"]], key=lambda d: d["iteration"])
        if not mine:
            continue
        pick = mine[-1] if params.final == "last" else max(mine, key=lambda d: d["next_fitness"])
        lineage, cid = [], pick["next_candidate_id"]
        while cid in by_id:
            lineage.append(by_id[cid])
            cid = by_id[cid]["parents"][0]
        lineage.reverse()
        final = by_id[pick["next_candidate_id"]]
        evolved.append({
            "id": f"evo-{s['source']}-{s['id']}", "prompt": final["prompt"], "label": "safe", "category": s.get("category"),
            "seed_source": s["source"], "seed_id": s["id"], "seed_prompt": s["prompt"], "iteration": pick["iteration"],
            "fitness": pick["next_fitness"], "strategies": " > ".join(c["strategy"] for c in lineage),
            "lineage": " > ".join(c["candidate_id"] for c in lineage), "mutator": final["mutator"],
            "parents": ", ".join(final["parents"]), "safety_filter": params.filter_mode})
    return evolved
