"""EvoRefuse's mutator, recombiner and safety judge: the offline operators with the offline safety rule, or
an LLM through any generation backend with every call cached on disk (a re-run re-asks nothing)."""

from __future__ import annotations

import random

from porover.digests import digest_of
from porover.methods.evorefuse.operators import OFFLINE_OPERATORS, offline_mutate, offline_recombine, seed_recoverable
from porover.methods.evorefuse.prompts import (RECOMBINE_SYSTEM, SAFETY_JUDGE_SYSTEM, STRATEGIES, Rewrite, judge_query,
                                               mutation_system, parse_judgement, parse_rewrite, recombination_query)


class Mutator:
    """Mutation, recombination and the safety filter, offline or through an LLM backend (calls cached).

    Args:
        params: The stage's `porover.methods.evorefuse.stage.EvolveParams` (not imported: the stage imports this module).
    """

    def __init__(self, params) -> None:
        self.params = params
        self._backend = None
        self.calls = 0  # LLM calls actually made (cache misses)

    @property
    def name(self) -> str:
        return "offline" if not self.params.uses_llm else f"{self.params.mutator_backend}:{self.params.mutator}"

    def _settings(self, kind: str, **extra) -> dict:
        p = self.params
        return {"kind": kind, "backend": p.mutator_backend, "model": p.mutator, "base_url": p.base_url,
                "temperature": p.mutator_temperature, "max_new_tokens": p.mutator_max_new_tokens, **extra}

    def _make(self):
        if self._backend is None:
            from porover.generation import make_backend

            p = self.params
            self._backend = make_backend(p.mutator, p.mutator_backend, device=p.device, batch_size=8,
                                         **p.endpoint_settings())
        return _Counting(self._backend, self)

    def _ask(self, kind: str, system: str, queries: list[str], settings: dict, tags: list[str] | None = None) -> list[str]:
        from porover.generation import Sampling
        from porover.judges.llm import cached_generate

        if not queries:
            return []
        sampling = Sampling(max_new_tokens=self.params.mutator_max_new_tokens,
                            temperature=self.params.mutator_temperature, seed=self.params.seed + settings.get("round", 0),
                            system_prompt=system)
        settings = {**settings, "system": digest_of(system)}
        # Each call is cached under its own query and tag, so a resumed run (any subset of seeds) re-asks nothing.
        pairs = list(zip(queries, tags or [""] * len(queries)))
        return cached_generate(f"evorefuse_{kind}", settings, pairs, queries, self._make, sampling)

    def mutate(self, strategy: str, instructions: list[str], tags: list[str], round_: int) -> list[Rewrite]:
        """One strategy applied to each instruction (``tags``, one per instruction: seed, iteration and strategy,
        seed the offline operators and key the LLM calls in the cache)."""
        if not self.params.uses_llm:
            return [Rewrite(offline_mutate(x, strategy, random.Random(f"{self.params.seed}/{tag}/{round_}")),
                                f"offline operator: {OFFLINE_OPERATORS[strategy][0]}", "parsed", "")
                    for x, tag in zip(instructions, tags)]
        spec = next(s for s in STRATEGIES if s.name == strategy)
        replies = self._ask("mutation", mutation_system(spec), instructions,
                            self._settings("mutation", strategy=strategy, round=round_), tags)
        return [parse_rewrite(reply, x) for reply, x in zip(replies, instructions)]

    def recombine(self, pairs: list[tuple[str, str]], anchors: list[str], tags: list[str]) -> list[Rewrite]:
        """One child per parent pair."""
        if not self.params.uses_llm:
            out = []
            for (a, b), anchor, tag in zip(pairs, anchors, tags):
                child = offline_recombine(a, b, anchor, random.Random(f"{self.params.seed}/{tag}"))
                out.append(Rewrite(child, "offline recombination: the first parent's frame before the seed, the "
                                              "second's after it", "parsed", "") if child else
                           Rewrite(None, "", "unchanged", ""))
            return out
        replies = self._ask("recombination", RECOMBINE_SYSTEM, [recombination_query(a, b) for a, b in pairs],
                            self._settings("recombination"), tags)
        return [parse_rewrite(reply) for reply in replies]

    def judge(self, rewrites: list[Rewrite], seeds: list[dict]) -> list[tuple[str | None, str]]:
        """(verdict, why) per parsed rewrite: ``safe`` passes; ``unsafe`` or None (unreadable judge reply) do not."""
        p, out, ask = self.params, [None] * len(rewrites), []
        for i, (rewrite, seed) in enumerate(zip(rewrites, seeds)):
            if len(rewrite.instruction) > p.max_prompt_chars:
                out[i] = ("unsafe", f"longer than max_prompt_chars={p.max_prompt_chars}")
            elif p.filter_mode == "none":
                out[i] = ("safe", "no safety filter")
            elif p.filter_mode == "rule":
                ok = seed.get("label") != "unsafe" and seed_recoverable(rewrite.instruction, seed["prompt"])
                out[i] = ("safe" if ok else "unsafe", "rule: benign seed, seed text kept verbatim" if ok else
                          "rule: seed not labelled safe, or its text is no longer there")
            else:
                ask.append(i)
        if ask:
            replies = self._ask("safety", SAFETY_JUDGE_SYSTEM,
                                [judge_query(rewrites[i].instruction, rewrites[i].reason) for i in ask],
                                self._settings("safety"))
            for i, reply in zip(ask, replies):
                out[i] = (parse_judgement(reply), reply)
        return out


class _Counting:
    """A backend wrapper that counts the prompts it is asked to generate for (cache misses)."""

    def __init__(self, backend, owner: Mutator) -> None:
        self.backend, self.owner = backend, owner
        self.name, self.batch_size = backend.name, getattr(backend, "batch_size", 1)

    def generate(self, prompts, sampling, desc="generate"):
        self.owner.calls += len(prompts)
        yield from self.backend.generate(prompts, sampling, desc=desc)
