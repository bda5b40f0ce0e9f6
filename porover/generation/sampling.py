"""Sampling settings and chat rendering shared by every generation backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    """Sampling settings, recorded with every completion.

    Attributes:
        max_new_tokens: Generation budget per completion; None sets no budget of ours: an endpoint's own
            default, vLLM's and transformers' the model's context limit (for judges whose upstream sets none).
        temperature: 0 means greedy decoding.
        top_p: Nucleus sampling mass (ignored when greedy).
        seed: Seed for sampled decoding.
        system_prompt: Optional system message put before every prompt.
    """

    max_new_tokens: int | None = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    system_prompt: str | None = None


def to_messages(prompt: str, system_prompt: str | None = None) -> list[dict]:
    """One user turn (after an optional system message) in chat-message form."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": prompt}]


def render_prompts(tokenizer, prompts: Sequence[str], system_prompt: str | None = None) -> list[str]:
    """The prompts through the tokenizer's chat template, ending with the generation prompt.

    Every local backend renders this way; with ``system_prompt`` None the template's own default applies
    (SmolLM2's inserts one).
    """
    return [tokenizer.apply_chat_template(to_messages(prompt, system_prompt), add_generation_prompt=True,
                                          tokenize=False) for prompt in prompts]

