"""Spending on priced endpoints: a stage's cap (``max_cost_usd``), counted from the usage each API response reports.

A stage that may call an OpenAI-compatible endpoint (teacher, LLM judges, EvoRefuse's mutator) runs its entry
functions under its `Budget` (`metered`): a ledger, ``spending.jsonl`` in its folder, one line per answered request
(model, prompt and completion tokens, USD at the stage's ``prices``). `porover.generation.OpenAIBackend` asks the
active budget before every request: a request whose worst case (its text at `porover.costs.CHARS_PER_TOKEN`
characters per token, or at the most input tokens per character an answer has reported, plus its whole token budget)
would take the stage's spending past the cap is not sent; the requests in flight finish and their rows are stored;
then `BudgetExceeded` stops the stage and names the parameter to raise. A resumed stage reads its ledger, so it
counts what it spent before, and its stores, so it asks nothing twice. The ledger counts every run of the stage in
this run folder (re-runs included): money spent stays spent.

Before a run, `cap_errors` compares each cap with the stage's worst-case estimate (`porover.costs`).
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from porover.costs import CHARS_PER_TOKEN

SPENDING_FILE = "spending.jsonl"
# The output bound reserved for a request that sets none (OR-Bench's judge: the endpoint's default decides).
UNBOUNDED_OUTPUT_TOKENS = 1024
# Parameters that decide how much a stage may spend, not what it writes: changing them re-runs nothing.
SPENDING_FIELDS = ("max_cost_usd", "prices")


class BudgetExceeded(RuntimeError):
    """A stage stopped at its cost cap (the message says what was spent and which parameter to raise)."""


def ledger_spent(folder: str | Path) -> float | None:
    """USD the ledger of a stage folder records (None: no priced request, or no ledger)."""
    path = Path(folder) / SPENDING_FILE
    if not path.is_file():
        return None
    from porover.store import read_jsonl

    costs = [row["usd"] for row in read_jsonl(path) if row.get("usd") is not None]
    return sum(costs) if costs else None


class Budget:
    """A stage's spending: what its ledger records, what requests in flight may still cost, and its cap.

    Args:
        folder: The stage folder; the ledger is ``folder/spending.jsonl``.
        cap: ``max_cost_usd`` (None: no cap; spending is still recorded).
        prices: Model -> (USD per million input tokens, per million output tokens).
        where: The parameter to raise, as a reader finds it (``stages.teach.max_cost_usd``).
    """

    def __init__(self, folder: str | Path, cap: float | None, prices: dict, where: str) -> None:
        self.path = Path(folder) / SPENDING_FILE
        self.cap, self.where = cap, where
        self.prices = {model: tuple(pair) for model, pair in prices.items()}
        self.spent = ledger_spent(folder) or 0.0
        self.reserved = 0.0
        # Input tokens per character of request text, the largest seen (a chat template adds tokens the text
        # lacks); the worst case of a request's input is its length at this rate.
        self.tokens_per_char = 1 / CHARS_PER_TOKEN
        self._lock = threading.Lock()

    def _usd(self, model: str, input_tokens: float, output_tokens: float) -> float | None:
        price = self.prices.get(model)
        return None if price is None else (input_tokens * price[0] + output_tokens * price[1]) / 1e6

    def reserve(self, model: str, text: str, max_tokens: int | None) -> float:
        """Admit one request (its worst case is held until `settle` or `release`); returns the amount held.

        Raises:
            BudgetExceeded: Its worst case would take spending past the cap.
            ValueError: A cap is set and ``model`` has no price.
        """
        if self.cap is None:
            return 0.0
        worst = self._usd(model, len(text) * self.tokens_per_char, max_tokens or UNBOUNDED_OUTPUT_TOKENS)
        if worst is None:
            raise ValueError(f"{self.where}: the stage calls {model!r}, which has no price; give prices: "
                             f"{{{model}: [USD per 1M input tokens, USD per 1M output tokens]}}")
        with self._lock:
            if self.spent + self.reserved + worst > self.cap:
                raise BudgetExceeded(
                    f"stopped at the cost cap: this stage's endpoint calls have cost ${self.spent:.4f} (counted from "
                    f"the usage the API reported, in {self.path}), and the next request could cost up to "
                    f"${worst:.4f}, past {self.where} = {self.cap}. What was answered is stored; raise "
                    f"{self.where} and run again to resume (nothing answered is asked again).")
            self.reserved += worst
        return worst

    def settle(self, held: float, model: str, text: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Record an answered request (``text``: what `reserve` was given) at the usage it reported; free what
        it held."""
        usd = self._usd(model, prompt_tokens, completion_tokens)
        line = json.dumps({"model": model, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                           "usd": usd})
        with self._lock:
            self.reserved -= held
            self.tokens_per_char = max(self.tokens_per_char, prompt_tokens / max(len(text), 1))
            self.spent += usd or 0.0
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as ledger:  # flushed per request: a kill loses no count
                ledger.write(line + "\n")

    def release(self, held: float) -> None:
        """Free what a request that failed held."""
        with self._lock:
            self.reserved -= held


_active: Budget | None = None


def active_budget() -> Budget | None:
    """The budget of the stage running in this process (None outside a metered stage function)."""
    return _active


@contextmanager
def spending(params) -> Iterator[Budget]:
    """Make ``params``' stage's budget the active one; inside another stage's, that outer one stays active (a
    refusal-token stage's threshold evaluations spend from the refusal-token stage's cap)."""
    global _active
    if _active is not None:
        yield _active
        return
    prices = params.price_table() if hasattr(params, "price_table") else {}
    _active = Budget(params.stage_dir, getattr(params, "max_cost_usd", None), prices,
                     f"stages.{params.stage_name}.max_cost_usd")
    try:
        yield _active
    finally:
        _active = None


def metered(function):
    """Run a stage entry function (first argument: its parameters) under its stage's `Budget`."""
    @functools.wraps(function)
    def run(params, *args, **kwargs):
        with spending(params):
            return function(params, *args, **kwargs)

    return run


def cap_errors(run, costs: list | None = None) -> list[str]:
    """Each stage whose ``max_cost_usd`` is below its worst-case estimate, or that calls an unpriced model.

    Args:
        run: A `porover.run_file.RunParams`.
        costs: Its `porover.costs.estimate_costs` (computed here when not given).
    """
    capped = {name: stage.params["max_cost_usd"] for name, stage in run.stages.items()
              if stage.params.get("max_cost_usd") is not None}
    if not capped:
        return []
    from porover.costs import estimate_costs

    errors = []
    for cost in costs or estimate_costs(run):
        if cost.stage not in capped or not cost.api_calls:
            continue
        where = f"{run.path}: stages.{cost.stage}.max_cost_usd"
        unpriced = [note for note in cost.notes if note.startswith("no price given")]
        if unpriced:
            errors.append(f"{where}: a cap needs a price for every endpoint model the stage calls ("
                          f"{'; '.join(dict.fromkeys(unpriced))}); give prices: {{MODEL: [input USD, output USD]}} "
                          "per million tokens")
        elif cost.usd > capped[cost.stage]:
            errors.append(f"{where}: {capped[cost.stage]} is below the stage's worst-case estimate ${cost.usd:,.2f} "
                          f"({cost.api_calls:,} calls, {cost.input_tokens:,} input and {cost.output_tokens:,} output "
                          "tokens at the file's prices, every generation at its full token budget); raise it, or "
                          "lower the prompt counts, samples or token budgets")
    return errors


def spending_lines(manifest: dict) -> list[str]:
    """One line per stage that has an estimate or spent something: spent, worst-case estimate and cap (USD)."""
    lines = []
    for stage, record in manifest.get("stages", {}).items():
        estimate, spent = record.get("estimated_usd"), record.get("spent_usd")
        if not estimate and spent is None:
            continue
        cap = manifest.get("params", {}).get(stage, {}).get("max_cost_usd")
        lines.append(f"{stage:24s} spent {'-' if spent is None else f'${spent:,.4f}':>12s}   worst-case estimate "
                     f"{'-' if estimate is None else f'${estimate:,.2f}':>10s}   cap "
                     f"{'none' if cap is None else f'${cap:,.2f}'}")
    return lines
