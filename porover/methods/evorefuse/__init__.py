"""EvoRefuse's pieces (Wu et al., arXiv 2505.23473): prompts, parsing, operators, annealing, fitness.

EvoRefuse evolves a seed instruction so that a target model refuses it with confidence while it stays
harmless. Per seed and iteration: mutate the current instruction with nine strategies (in order) until L
mutants pass a safety filter, estimate each mutant's fitness from K responses of the target, recombine two
of the top-L mutants N times (also safety-filtered), take the best candidate, and accept it over the
current instruction by simulated annealing with τ_i = max(τ_f, τ_0 − β·i).

Modules, one idea each:

- `prompts`: the authors' strategy, recombination, safety-judge and safety-prior texts (verbatim; see its
  docstring for provenance and licence) and the parsers of the mutator's and judge's replies.
- `operators`: the workbench's own offline mutation and recombination, and the seed-recoverability check.
- `fitness`: the annealing schedule and acceptance rule, both fitness forms, response log-probabilities.
- `scoring`: a transformers backend that records log-probabilities while generating.
- `diversity`: lexical diversity of a prompt set.
- `mutator`, `target`, `loop`: the mutator/recombiner/safety judge, fitness under the target model, and one
  iteration over many seeds; these load models and write stores, so import them from their modules.

This package re-exports the pure parts (no model loads, nothing read from disk); the stage that runs the loop
and writes its outputs is `porover.methods.evorefuse.stage`.
"""

from porover.methods.evorefuse.diversity import lexical_diversity
from porover.methods.evorefuse.fitness import (CODE_COMPLIANCE_SCORE, CODE_CONFIDENCE_WEIGHT, CODE_REFUSAL_WEIGHT,
                                               FITNESS_FORMS, accept, acceptance_probability, annealing_temperature,
                                               code_fitness, paper_fitness, response_logprobs)
from porover.methods.evorefuse.operators import OFFLINE_OPERATORS, offline_mutate, offline_recombine, seed_recoverable
from porover.methods.evorefuse.prompts import (MUTATION_PREFIX, MUTATION_SUFFIX, RECOMBINE_SYSTEM, SAFETY_JUDGE_SYSTEM,
                                               SAFETY_PRIOR, STRATEGIES, STRATEGY_NAMES, Rewrite, Strategy, judge_query,
                                               mutation_system, parse_judgement, parse_rewrite, recombination_query)
from porover.methods.evorefuse.scoring import scoring_backend

__all__ = [
    "CODE_COMPLIANCE_SCORE", "CODE_CONFIDENCE_WEIGHT", "CODE_REFUSAL_WEIGHT", "FITNESS_FORMS", "MUTATION_PREFIX",
    "MUTATION_SUFFIX", "OFFLINE_OPERATORS", "RECOMBINE_SYSTEM", "SAFETY_JUDGE_SYSTEM", "SAFETY_PRIOR", "STRATEGIES",
    "STRATEGY_NAMES", "Rewrite", "Strategy", "accept", "acceptance_probability", "annealing_temperature",
    "code_fitness", "judge_query", "lexical_diversity", "mutation_system", "offline_mutate", "offline_recombine",
    "paper_fitness", "parse_judgement", "parse_rewrite", "recombination_query", "response_logprobs",
    "scoring_backend", "seed_recoverable",
]
