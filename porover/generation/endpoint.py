"""Generation through any OpenAI-compatible chat endpoint (OpenAI, vLLM, ``transformers serve``)."""

from __future__ import annotations

from collections.abc import Sequence

from porover.generation.sampling import Sampling, to_messages
from porover.progress import progress


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

    def _complete(self, prompt: str, sampling: Sampling, seed: int) -> tuple[str, int, dict | None, str | None]:
        from porover.spending import active_budget

        options = {"temperature": sampling.temperature, "top_p": sampling.top_p}
        if sampling.temperature > 0:
            options["seed"] = seed
        if sampling.max_new_tokens is not None:  # None: the endpoint's own default, as e.g. OR-Bench's judge
            options["max_tokens"] = sampling.max_new_tokens
        budget = active_budget()  # the running stage's cost cap: a request past it is never sent
        request_text = (sampling.system_prompt or "") + prompt
        held = budget.reserve(self.model, request_text, sampling.max_new_tokens) if budget else 0.0
        try:
            reply = self.client.chat.completions.create(
                model=self.model, messages=to_messages(prompt, sampling.system_prompt), extra_body=self.extra_body,
                **options,
            )
        except BaseException:
            if budget:
                budget.release(held)
            raise
        choice = reply.choices[0]
        text = choice.message.content or ""
        usage = reply.usage
        completion_tokens = usage.completion_tokens if usage else 0
        if budget:
            budget.settle(held, self.model, request_text, usage.prompt_tokens if usage else 0, completion_tokens)
        with self._lock:
            self.usage["requests"] += 1
            if usage:
                self.usage["prompt_tokens"] += usage.prompt_tokens
                self.usage["completion_tokens"] += completion_tokens
        request_usage = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": completion_tokens} if usage else None
        return text.strip(), completion_tokens, request_usage, choice.finish_reason

    def generate(self, prompts: Sequence[str], sampling: Sampling = Sampling(), desc: str = "generate",
                 seeds: Sequence[int] | None = None):
        """Generate one completion per prompt, yielding ``(index, text, new_tokens, finish_reason)`` as each returns.

        Results come in completion order, not prompt order; the index says which prompt each answers.
        ``finish_reason`` is the endpoint's (``"stop"``, ``"length"``, ``"content_filter"``...). With
        ``temperature > 0`` each request carries its prompt's seed (``seeds``; None: ``sampling.seed`` for all).

        Raises:
            porover.spending.BudgetExceeded: The running stage's cost cap stopped further requests; raised
                after every request already sent has been answered and yielded.
        """
        from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed

        from porover.spending import BudgetExceeded

        seeds = [sampling.seed] * len(prompts) if seeds is None else list(seeds)
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        stopped = None
        with ThreadPoolExecutor(max_workers=self.batch_size) as pool, \
                progress(total=len(prompts), desc=desc, unit="prompt") as bar:
            futures = {pool.submit(self._complete, prompt, sampling, seed): i
                       for i, (prompt, seed) in enumerate(zip(prompts, seeds))}
            try:
                for future in as_completed(futures):
                    try:
                        text, count, self.last_usage, finish = future.result()
                    except CancelledError:
                        continue
                    except BudgetExceeded as error:  # at the cap: send nothing more, but keep what is in flight
                        stopped = stopped or error
                        for queued in futures:
                            queued.cancel()
                        continue
                    bar.update(1)
                    yield futures[future], text, count, finish
            finally:
                for future in futures:  # a consumer that stops early should not wait for the whole queue
                    future.cancel()
        if stopped is not None:  # every answered request was yielded (and stored) first
            raise stopped
