"""Generating with a refusal-token model: the first token forced by the threshold rule.

`RefusalTokenModel` is the `porover.model_folders.ModelHandle` of a refusal-token stage's ``model/``: the
evaluation stage opens it like any model (``model: stage:refusal_tokens``) and passes its `RefusalTokenSettings`
as ``model_settings``; it decides each prompt's first token with one forward pass, then generates after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from porover.config import Settings, param
from porover.generation.local import TransformersBackend
from porover.generation.sampling import Sampling
from porover.methods.refusal_tokens.tokens import (
    TokenSpec,
    choose_token,
    read_spec,
    refusal_probability,
    token_ids,
    token_probabilities,
)
from porover.model_folders import ModelHandle


@dataclass(frozen=True)
class Steering:
    """How the first token is forced: what the evaluation stage's ``refusal_token_*`` parameters say.

    Attributes:
        spec: The model's token scheme.
        threshold: ``t`` (None: the likelier token).
        temperature: Softmax temperature of the probabilities.
        controlled: Category mode: the controlled refusal tokens (empty: all).
    """

    spec: TokenSpec
    threshold: float | None = None
    temperature: float = 1.0
    controlled: tuple[str, ...] = field(default_factory=tuple)

    def settings(self) -> dict:
        """What shapes the responses, for store keys."""
        return {**asdict(self), "spec": asdict(self.spec), "suppress_after_first": True}


def decide(model, tokenizer, rows: Sequence[dict], steering: Steering, system_prompt: str | None = None,
           batch_size: int = 32) -> list[dict]:
    """The rows, each with ``refusal_token``: the forced token, P(refusal token) and every token's P."""
    ids = token_ids(tokenizer, steering.spec)
    records = token_probabilities(model, tokenizer, [row["prompt"] for row in rows], steering.spec,
                                  steering.temperature, system_prompt, batch_size)
    out = []
    for row, record in zip(rows, records):
        forced = choose_token(record, steering.spec, ids, steering.threshold, steering.controlled)
        out.append({**row, "refusal_token": {"forced": forced, "p_refusal": refusal_probability(record, steering.spec),
                                             "p": record["p"], "threshold": steering.threshold,
                                             "temperature": steering.temperature}})
    return out


class SteeredBackend(TransformersBackend):
    """`TransformersBackend` that appends a forced first token to each prompt before generating.

    The response is decoded from after the forced token, so the judges never read it. The scheme's tokens
    belong at the first position only: ``suppress`` (their ids) are never generated after it (a small model
    trained a few steps otherwise tends to repeat them, and decoding would strip them to an empty response).

    Args:
        model, tokenizer, batch_size: As `TransformersBackend`.
        forced: Prompt text -> the first token (a token string, or an id where the model's own argmax was kept).
        suppress: Token ids never generated after the forced one.
    """

    name = "transformers+refusal_token"

    def __init__(self, model, tokenizer, forced: dict[str, str | int], batch_size: int = 16,
                 suppress: Sequence[int] = ()) -> None:
        super().__init__(model, tokenizer, batch_size)
        self.forced = forced
        self.suppress = list(suppress)
        self._prompt_of: dict[str, str] = {}

    def generate(self, prompts: Sequence[str], sampling: Sampling = Sampling(), desc: str = "generate",
                 seeds: Sequence[int] | None = None):
        self._prompt_of = {self.render(prompt, sampling): prompt for prompt in prompts}
        yield from super().generate(prompts, sampling, desc, seeds)

    def _first_id(self, text: str) -> int:
        token = self.forced[self._prompt_of[text]]
        return token if isinstance(token, int) else self.tokenizer.convert_tokens_to_ids(token)

    def _generate_batch(self, texts: list[str], sampling: Sampling, seeds: list[int]) -> list[tuple[str, int, str]]:
        import torch
        from transformers import LogitsProcessorList

        from porover.generation.local import RowSampler

        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        first = torch.tensor([[self._first_id(text)] for text in texts], dtype=inputs["input_ids"].dtype)
        inputs["input_ids"] = torch.cat([inputs["input_ids"], first], dim=1)
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(first)], dim=1)
        inputs = inputs.to(self.model.device)
        options = {}
        if sampling.temperature > 0:  # one generator per row, as the base backend samples
            options["logits_processor"] = LogitsProcessorList([RowSampler(seeds, sampling.temperature, sampling.top_p)])
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self._budget(inputs["input_ids"].shape[1], sampling),
                                         pad_token_id=self.tokenizer.pad_token_id, do_sample=False, top_k=None,
                                         top_p=None, temperature=None, suppress_tokens=self.suppress or None,
                                         **options)
        return self._decode_new(output[:, inputs["input_ids"].shape[1]:].tolist())


def steered_backend(model, tokenizer, rows: Sequence[dict], steering: Steering, system_prompt: str | None = None,
                    batch_size: int = 16) -> tuple[SteeredBackend, list[dict]]:
    """Decide the first token of each row (`decide`) and a backend that forces it; returns both."""
    decided = decide(model, tokenizer, rows, steering, system_prompt, batch_size)
    forced = {row["prompt"]: row["refusal_token"]["forced"] for row in decided}
    suppress = list(token_ids(tokenizer, steering.spec).values())
    return SteeredBackend(model, tokenizer, forced, batch_size, suppress), decided


def is_refusal_token(token: str | int | None, spec: TokenSpec) -> bool:
    return token in spec.refusals


def agreement(rows: Sequence[dict], spec: TokenSpec, refusal_key: str = "refusal",
              partial_is_refusal: bool = True) -> dict:
    """How often the generated text agrees with the forced token, as the judge reads it.

    Returns:
        ``refusal_after_refuse``: share of responses after a refusal token judged refusals;
        ``compliance_after_respond``: share after ``[respond]`` judged not refusals; ``agreement``: both
        pooled; ``forced_refusal_rate``: share of prompts given a refusal token; and the counts.
    """
    from porover.vocabulary import is_refusal

    after_refuse, after_respond = [], []
    for row in rows:
        decision, refused = row.get("refusal_token"), is_refusal(row.get(refusal_key), partial_is_refusal)
        if not decision or refused is None:
            continue
        (after_refuse if is_refusal_token(decision["forced"], spec) else after_respond).append(refused)
    share = lambda values: sum(values) / len(values) if values else None  # noqa: E731
    n = len(after_refuse) + len(after_respond)
    return {"refusal_after_refuse": share(after_refuse),
            "compliance_after_respond": share([not v for v in after_respond]),
            "agreement": (sum(after_refuse) + sum(not v for v in after_respond)) / n if n else None,
            "forced_refusal_rate": len(after_refuse) / n if n else None,
            "n_refuse": len(after_refuse), "n_respond": len(after_respond)}


@dataclass
class RefusalTokenSettings(Settings):
    """How a refusal-token model's first token is forced when it is evaluated (``model_settings``)."""

    threshold: float | None = param(None, "force the refusal token first iff its P >= this (null = the likelier of "
                                    "it and [respond])", ge=0, le=1)
    temperature: float = param(1.0, "softmax temperature of that P", gt=0)
    controlled: list[str] = param([], "category-token models: the tokens the threshold controls ([] = all)")


class RefusalTokenModel(ModelHandle):
    """A refusal-token stage's model folder: generation forces the first token (`Steering`)."""

    SETTINGS = RefusalTokenSettings

    def steering(self) -> Steering:
        """The rule that forces the first token, from the folder's token scheme and the settings."""
        spec = read_spec(self.name)
        if spec is None:
            raise FileNotFoundError(f"{self.name}: no refusal-token scheme (refusal_tokens.json)")
        return Steering(spec, self.settings.threshold, self.settings.temperature, tuple(self.settings.controlled))

    def response_settings(self) -> dict:
        return self.steering().settings()

    def generator(self, rows: Sequence[dict], system_prompt: str | None = None, batch_size: int = 16):
        model, tokenizer = self.load()
        return steered_backend(model, tokenizer, rows, self.steering(), system_prompt, batch_size)

    def summary(self, rows: Sequence[dict], partial_is_refusal: bool = True) -> dict:
        steering = self.steering()
        return {"refusal_tokens": {**steering.settings(), "agreement": agreement(
            rows, steering.spec, partial_is_refusal=partial_is_refusal)}}
