"""EvoRefuse's fitness under the target model: K judged responses per candidate and their log-likelihoods,
stored so a killed run resumes."""

from __future__ import annotations

import math
import time

from porover.digests import digest_of
from porover.methods.evorefuse.fitness import CODE_COMPLIANCE_SCORE, code_fitness, paper_fitness, response_logprobs
from porover.methods.evorefuse.scoring import scoring_backend
from porover.store import JsonlStore


class Target:
    """The target model: K responses per candidate (batched across candidates and seeds), judged, with their
    log-likelihoods (paper form: scored while generating; code form: the response alone, one forward pass).

    Args:
        params: The stage's `porover.methods.evorefuse.stage.EvolveParams` (not imported: the stage imports this module).
    """

    def __init__(self, params) -> None:
        from porover.models import model_digest

        self.params, self.digest = params, model_digest(params.target)
        self._backend = None
        self.generated = 0
        self.seconds = {"load": 0.0, "generate": 0.0, "judge": 0.0, "likelihood": 0.0, "rates": 0.0}
        self.fitness = JsonlStore(params.stage_dir / "fitness.jsonl", key=lambda r: (r["config"], r["draw"]))
        self.samples = {}

    def backend(self):
        if self._backend is None:
            from porover.models import load_model

            start = time.perf_counter()
            self._backend = scoring_backend(*load_model(self.params.target, device=self.params.device),
                                                batch_size=self.params.batch_size)
            self.seconds["load"] += time.perf_counter() - start
        return self._backend

    def _sampling(self, system: str | None):
        from porover.generation import Sampling

        p = self.params
        return Sampling(max_new_tokens=p.target_max_new_tokens, temperature=p.target_temperature, top_p=p.target_top_p,
                        seed=p.seed, system_prompt=system or None)

    @property
    def config(self) -> str:
        p = self.params
        return digest_of([self.digest, p.fitness, p.fitness_lambda, p.fitness_samples, p.p_floor, p.target_system_prompt,
                          p.target_temperature, p.target_top_p, p.target_max_new_tokens, p.refusal_judge,
                          p.refusal_judge_settings, p.partial_is_refusal])

    def _run(self, rows: list[dict], system: str | None, name: str) -> list[dict]:
        """K judged responses per row (``draw`` ids), from the store where they exist."""
        from porover.generation import completion_key, sample_completions
        from porover.judges import judge_refusals
        from porover.vocabulary import is_refusal

        if name not in self.samples:
            self.samples[name] = JsonlStore(self.params.stage_dir / f"target_{name}.jsonl", key=completion_key)
        store = self.samples[name]
        before, start = len(store), time.perf_counter()
        items = [{"source": "evolve", "id": r["draw"], "prompt": r["prompt"]} for r in rows]
        done = sample_completions(self.backend, items, store, self._sampling(system), self.params.fitness_samples,
                                  self.params.target, desc=f"{self.params.stage_name}: target ({name})")
        self.generated += len(store) - before
        self.seconds["generate"] += time.perf_counter() - start
        start = time.perf_counter()
        verdicts = judge_refusals([d["prompt"] for d in done], [d["response"] for d in done],
                                  judge=self.params.refusal_judge, **self.params.refusal_judge_settings)
        for d, v in zip(done, verdicts):
            refused = is_refusal(v.label, self.params.partial_is_refusal)
            d["p_refusal"] = v.score if v.score is not None else (None if refused is None else float(refused))
            d["refused"] = refused
        self.seconds["judge"] += time.perf_counter() - start
        return done

    def _logprobs(self, samples: list[dict], system: str | None, conditional: bool) -> list[tuple[float, int]]:
        backend, start = self.backend(), time.perf_counter()
        contexts = [backend.render(s["prompt"], self._sampling(system)) if conditional else None for s in samples]
        scores = response_logprobs(backend.model, backend.tokenizer, contexts, [s["response"] for s in samples],
                                       batch_size=max(1, self.params.batch_size // 2))
        self.seconds["likelihood"] += time.perf_counter() - start
        return scores

    def estimate(self, rows: list[dict]) -> dict[str, dict]:
        """Fitness terms per ``draw`` of each row (``draw``: a unique id of this estimate, ``prompt``)."""
        p, config = self.params, self.config
        todo = [r for r in rows if (config, r["draw"]) not in self.fitness]
        if todo:
            results = self._paper(todo) if p.fitness == "paper" else self._code(todo)
            self.fitness.append({"config": config, "draw": r["draw"], "prompt": r["prompt"], **results[r["draw"]]}
                                for r in todo)
        found = {row["draw"]: row for row in self.fitness.rows if row["config"] == config}
        return {r["draw"]: found[r["draw"]] for r in rows}

    def _paper(self, rows: list[dict]) -> dict[str, dict]:
        p = self.params
        samples = self._run(rows, p.target_system_prompt, "paper")
        # log p(y | x, s) as scored while generating; a forward pass only for samples stored without it.
        scored = [s for s in samples if not (s.get("usage") or {}).get("response_ids") and s["response"]]
        redone = iter(self._logprobs(scored, p.target_system_prompt, conditional=True) if scored else [])
        logps = [(s["usage"]["response_logprob"], len(s["usage"]["response_ids"]))
                 if (s.get("usage") or {}).get("response_ids") else (next(redone) if s["response"] else (0.0, 0))
                 for s in samples]
        out = {}
        for r in rows:
            mine = [(s, lp) for s, lp in zip(samples, logps) if s["id"] == r["draw"]]
            probs = [s["p_refusal"] if s["p_refusal"] is not None else p.p_floor for s, _ in mine]
            means = [total / n if n else 0.0 for _, (total, n) in mine]
            out[r["draw"]] = {"fitness": paper_fitness(probs, means, p.fitness_lambda, p.p_floor),
                              "mean_log_p_refusal": sum(math.log(max(q, p.p_floor)) for q in probs) / len(probs),
                              "mean_p_refusal": sum(probs) / len(probs),
                              "refusal_share": share([s["refused"] for s, _ in mine]),
                              "mean_token_logprob": sum(means) / len(means), "k": len(mine),
                              "example_response": mine[0][0]["response"] if mine else None}
        return out

    def _code(self, rows: list[dict]) -> dict[str, dict]:
        p = self.params
        refusal = self._run(rows, p.target_system_prompt, "code_refusal")
        confidence = self._run(rows, None, "code_confidence")
        logps = self._logprobs(confidence, None, conditional=False)
        out = {}
        for r in rows:
            refused = [bool(s["refused"]) for s in refusal if s["id"] == r["draw"]]
            nll = [-(total / n) if n else 0.0 for s, (total, n) in zip(confidence, logps) if s["id"] == r["draw"]]
            out[r["draw"]] = {"fitness": code_fitness(refused, nll), "refusal_share": share(refused),
                              "mean_refusal_score": sum(1.0 if x else CODE_COMPLIANCE_SCORE for x in refused) / len(refused),
                              "mean_ln_ppl": sum(x * math.log(2) for x in nll) / len(nll),
                              "k": len(refused),
                              "example_response": next(s["response"] for s in refusal if s["id"] == r["draw"])}
        return out


def share(flags: list) -> float | None:
    """The share of true flags among those not None (unjudged), or None when none is."""
    parsed = [f for f in flags if f is not None]
    return sum(bool(f) for f in parsed) / len(parsed) if parsed else None
