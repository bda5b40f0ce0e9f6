"""Generation: batched in-process transformers generation, resumable over a JSONL store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from porover.progress import progress
from porover.store import JsonlStore


@dataclass(frozen=True)
class Sampling:
    """Sampling settings, recorded with every completion.

    Attributes:
        max_new_tokens: Generation budget per completion.
        temperature: 0 means greedy decoding.
        top_p: Nucleus sampling mass (ignored when greedy).
        seed: Seed for sampled decoding.
        system_prompt: Optional system message put before every prompt.
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    system_prompt: str | None = None


def to_messages(prompt: str, system_prompt: str | None = None) -> list[dict]:
    """One user turn (after an optional system message) in chat-message form."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": prompt}]


class TransformersBackend:
    """In-process batched generation with a Hugging Face causal LM.

    Prompts are sorted by length so each batch pads little, decoded with the KV cache under
    ``torch.inference_mode``, and returned in the caller's order.

    Args:
        model: A causal LM (see `porover.load_model`).
        tokenizer: Its tokenizer; the chat template comes from it.
        batch_size: Prompts per ``generate`` call.
    """

    name = "transformers"

    def __init__(self, model, tokenizer, batch_size: int = 16) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    def render(self, prompt: str, sampling: Sampling) -> str:
        """The prompt as the model sees it, through the tokenizer's chat template."""
        return self.tokenizer.apply_chat_template(
            to_messages(prompt, sampling.system_prompt), add_generation_prompt=True, tokenize=False
        )

    @torch.inference_mode()
    def _generate_batch(self, texts: list[str], sampling: Sampling) -> list[tuple[str, int]]:
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = inputs.to(self.model.device)
        greedy = sampling.temperature <= 0
        options = {"do_sample": False} if greedy else {
            "do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p,
        }
        if not greedy:
            torch.manual_seed(sampling.seed)
        output = self.model.generate(
            **inputs, max_new_tokens=sampling.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
            top_k=None, **options,
        )
        new = output[:, inputs["input_ids"].shape[1]:]
        stops = {self.tokenizer.pad_token_id, *self._eos_ids()}
        results = []
        for row in new.tolist():
            length = next((i for i, token in enumerate(row) if token in stops), len(row))
            text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
            results.append((text.strip(), length))
        return results

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        return [eos] if isinstance(eos, int) else list(eos or [])

    def generate(self, prompts: Sequence[str], sampling: Sampling = Sampling(), desc: str = "generate"):
        """Generate one completion per prompt, yielding ``(index, text, new_tokens)`` batch by batch.

        Yielding per batch lets callers store results as they appear, so a killed run loses at most
        one batch.
        """
        texts = [self.render(prompt, sampling) for prompt in prompts]
        lengths = [len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        with progress(total=len(order), desc=desc, unit="prompt") as bar:
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                for index, (text, count) in zip(batch, self._generate_batch([texts[i] for i in batch], sampling)):
                    yield index, text, count
                bar.update(len(batch))


def generate_responses(backend, rows: Sequence[dict], store: JsonlStore, sampling: Sampling,
                       desc: str = "generate") -> list[dict]:
    """Generate responses for rows not yet in ``store``, appending each batch as it completes.

    Args:
        backend: A generation backend (e.g. `TransformersBackend`).
        rows: Dicts with at least ``source``, ``id`` and ``prompt``; other fields are copied along.
        store: Keyed by ``(source, id)``; rows already present are skipped.
        sampling: Sampling settings, recorded in every row.
        desc: Progress-bar label.

    Returns:
        Every stored row for ``rows``, in the order of ``rows``.
    """
    todo = [row for row in rows if (row["source"], row["id"]) not in store]
    if todo:
        settings = asdict(sampling)
        pending = []
        for index, text, count in backend.generate([row["prompt"] for row in todo], sampling, desc=desc):
            pending.append({**todo[index], "response": text, "new_tokens": count,
                            "backend": backend.name, "sampling": settings})
            if len(pending) >= getattr(backend, "batch_size", 1):
                store.append(pending)
                pending = []
        store.append(pending)
    by_key = {(row["source"], row["id"]): row for row in store.rows}
    return [by_key[(row["source"], row["id"])] for row in rows]


class OpenAIBackend:
    """Generation through any OpenAI-compatible chat endpoint (OpenAI, vLLM, ``transformers serve``).

    Requests run in a thread pool of ``concurrency`` workers; the official client retries 429, 5xx,
    connection errors and timeouts with exponential backoff (``max_retries``). Token usage is summed
    in ``usage``. The API key is read from the environment variable named ``api_key_env`` and is never
    stored on the instance or logged.

    Args:
        model: The model id the endpoint serves.
        base_url: Endpoint root such as ``http://127.0.0.1:8000/v1`` (None: OpenAI itself).
        api_key_env: Name of the environment variable holding the key.
        concurrency: Requests in flight at once.
        max_retries: Retries per request on transient errors.
        timeout: Seconds per request.
        extra_body: Extra request fields for a particular server, e.g. ``{"generation_config":
            '{"do_sample": true}'}`` for ``transformers serve``, which otherwise decodes greedily.
    """

    name = "openai"

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, max_retries: int = 6, timeout: float = 300.0,
                 extra_body: dict | None = None) -> None:
        import os
        import threading

        from openai import OpenAI

        key = os.environ.get(api_key_env)
        if not key and base_url is None:
            raise ValueError(f"the OpenAI API needs a key in the environment variable {api_key_env}")
        # Local servers (vLLM, transformers serve) accept any key, but the client insists on one.
        self.client = OpenAI(api_key=key or "no-key", base_url=base_url, max_retries=max_retries, timeout=timeout)
        self.model = model
        self.batch_size = concurrency  # generate_responses flushes its store every batch_size rows
        self.usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self.last_usage: dict | None = None  # usage of the request behind the completion just yielded
        self.extra_body = extra_body or None
        self._lock = threading.Lock()

    def _complete(self, prompt: str, sampling: Sampling) -> tuple[str, int, dict | None]:
        options = {"temperature": sampling.temperature, "top_p": sampling.top_p}
        if sampling.temperature > 0:
            options["seed"] = sampling.seed
        reply = self.client.chat.completions.create(
            model=self.model, messages=to_messages(prompt, sampling.system_prompt),
            max_tokens=sampling.max_new_tokens, extra_body=self.extra_body, **options,
        )
        text = reply.choices[0].message.content or ""
        usage = reply.usage
        completion_tokens = usage.completion_tokens if usage else 0
        with self._lock:
            self.usage["requests"] += 1
            if usage:
                self.usage["prompt_tokens"] += usage.prompt_tokens
                self.usage["completion_tokens"] += completion_tokens
        request_usage = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": completion_tokens} if usage else None
        return text.strip(), completion_tokens, request_usage

    def generate(self, prompts: Sequence[str], sampling: Sampling = Sampling(), desc: str = "generate"):
        """Generate one completion per prompt, yielding ``(index, text, new_tokens)`` as each returns.

        Results come in completion order, not prompt order; the index says which prompt each answers.
        """
        from concurrent.futures import ThreadPoolExecutor, as_completed

        with ThreadPoolExecutor(max_workers=self.batch_size) as pool, \
                progress(total=len(prompts), desc=desc, unit="prompt") as bar:
            futures = {pool.submit(self._complete, prompt, sampling): i for i, prompt in enumerate(prompts)}
            try:
                for future in as_completed(futures):
                    text, count, self.last_usage = future.result()
                    bar.update(1)
                    yield futures[future], text, count
            finally:
                for future in futures:  # a consumer that stops early should not wait for the whole queue
                    future.cancel()
