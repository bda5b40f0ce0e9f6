"""Generation: backends behind one interface, and resumable generation over append-only stores.

Every backend has ``generate(prompts, sampling, desc, seeds=None)``, yielding ``(index, text, new_tokens,
finish_reason)`` as results appear, so callers store them as they come and a killed run loses at most one batch.
``finish_reason`` is ``"stop"`` (end of turn), ``"length"`` (the token budget ran out) or None (unknown: recorded
completions). ``seeds`` gives one seed per prompt: sampled completions depend on their own prompt's seed only,
never on batch composition, so a resumed run draws what an uninterrupted one would have.

- `TransformersBackend` (``local``): in-process batched generation with a Hugging Face model, CPU or GPU;
- `OpenAIBackend` (``endpoint``): any OpenAI-compatible endpoint (OpenAI, vLLM, ``transformers serve``);
- `VLLMBackend` (``vllm_backend``): in-process vLLM on GPUs;
- `RecordedBackend` (``recorded``): completions a dataset ships, offline.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict

from porover.generation.endpoint import OpenAIBackend
from porover.generation.local import TransformersBackend
from porover.generation.recorded import RECORDED_TEACHERS, RecordedBackend
from porover.generation.sampling import Sampling, render_prompts, to_messages
from porover.digests import digest_of
from porover.store import JsonlStore

BACKENDS = ("transformers", "vllm", "openai", "recorded")


def make_backend(model: str, backend: str = "transformers", device: str = "auto", batch_size: int = 16,
                 base_url: str = "", api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8, max_retries: int = 6,
                 request_timeout: float = 300.0, extra_body: dict | None = None, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9):
    """The backend serving ``model`` (loads a model or opens a client).

    Args:
        model: For transformers and vllm an embedded name, folder or Hugging Face id; for openai the served
            model id; ``"recorded:<dataset>"`` is always the recorded backend.
        backend: One of `BACKENDS`.
        device: Device of the transformers backend.
        batch_size: Prompts per generate call (transformers) or per chunk (vllm).
        base_url, api_key_env, concurrency, max_retries, request_timeout, extra_body: The OpenAI-compatible
            endpoint (see `OpenAIBackend`); ``base_url=""`` is OpenAI itself.
        tensor_parallel_size, gpu_memory_utilization: vLLM settings.
    """
    if model.startswith("recorded:") or backend == "recorded":
        return RecordedBackend(model.removeprefix("recorded:"))
    if backend == "vllm":
        from porover.generation.vllm_backend import VLLMBackend
        from porover.models import resolve_model

        return VLLMBackend(resolve_model(model), tensor_parallel_size=tensor_parallel_size,
                           gpu_memory_utilization=gpu_memory_utilization, chunk_size=batch_size)
    if backend == "openai":
        return OpenAIBackend(model, base_url=base_url or None, api_key_env=api_key_env, concurrency=concurrency,
                             max_retries=max_retries, timeout=request_timeout, extra_body=extra_body)
    if backend != "transformers":
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    from porover.models import load_model

    return TransformersBackend(*load_model(model, device=device), batch_size=batch_size)


def generate_responses(backend, rows: Sequence[dict], store: JsonlStore, sampling: Sampling,
                       desc: str = "generate") -> list[dict]:
    """Generate responses for rows not yet in ``store``, appending each batch as it completes.

    Args:
        backend: A generation backend (e.g. `TransformersBackend`).
        rows: Dicts with at least ``source``, ``id`` and ``prompt``; other fields are copied along.
        store: Keyed by `response_key` (source, id and the prompt text); rows already present are skipped.
        sampling: Sampling settings, recorded in every row; a sampled response is seeded per row
            (`row_seed` of ``sampling.seed``, source, id), recorded as the row's ``sampling.seed``.
        desc: Progress-bar label.

    Returns:
        Every stored row for ``rows``, in the order of ``rows``, each with ``finish_reason``.
    """
    todo = [row for row in rows if response_key(row) not in store]
    if todo:
        seeds = [row_seed(sampling.seed, row["source"], row["id"], 0) for row in todo]
        pending = []
        try:
            for index, text, count, finish in backend.generate([row["prompt"] for row in todo], sampling, desc=desc,
                                                               seeds=seeds):
                pending.append({**todo[index], "response": text, "new_tokens": count, "finish_reason": finish,
                                "backend": backend.name, "sampling": {**asdict(sampling), "seed": seeds[index]}})
                if len(pending) >= getattr(backend, "batch_size", 1):
                    store.append(pending)
                    pending = []
        finally:  # stopped (a cost cap, an error): what was answered is kept
            store.append(pending)
    by_key = {response_key(row): row for row in store.rows}
    return [by_key[response_key(row)] for row in rows]


def response_key(row: dict) -> tuple:
    """Store key of a response: a prompt whose text changed under the same id is answered again."""
    return row["source"], row["id"], row["prompt"]


def row_seed(seed: int, source: str, id_: str, sample_index: int) -> int:
    """The seed of one sampled completion: a hash of (run seed, source, id, sample index).

    Seeding per prompt and sample, not per batch, makes a completion independent of which other prompts
    were generated with it: a run resumed after a kill (other batches) draws exactly what an uninterrupted
    run draws, and sample ``s`` of a prompt differs from its sample ``s + 1``.
    """
    key = json.dumps([seed, source, str(id_), sample_index])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") >> 1


def settings_digest(teacher: str, sampling: Sampling) -> str:
    """Short hash of what shapes a completion: the teacher's content (`porover.models.model_digest`) and the
    sampling settings. Changed settings or a retrained model never reuse stale rows; more samples do."""
    from porover.models import model_digest

    if teacher.startswith("recorded:"):
        return digest_of({"teacher": teacher})[:12]
    settings = asdict(sampling)
    if sampling.temperature > 0:  # per-row seeds (`row_seed`): stores sampled with per-batch seeds are not reused
        settings["seeding"] = "per_row"
    return digest_of({"teacher": model_digest(teacher), **settings})[:12]


def completion_key(row: dict) -> tuple:
    """Store key of a completion."""
    return row["config"], row["source"], row["id"], row["sample_index"]


def sample_completions(backend, rows: list[dict], store: JsonlStore, sampling: Sampling, n_samples: int, teacher: str,
                 desc: str = "sample") -> list[dict]:
    """Up to ``n_samples`` completions per row, generating only those not yet in ``store``.

    Args:
        backend: A generation backend, or a zero-argument function returning one, called only if a
            completion is missing. A backend with ``generate_samples`` (vLLM) draws all samples of a
            fresh prompt in one request; otherwise sample ``s`` of every prompt is one pass.
            Every completion is seeded by `row_seed` (run seed, source, id, sample index), recorded as its
            ``sampling.seed``, so resuming from the store draws what an uninterrupted run draws.
        rows: Prompt rows with ``source``, ``id`` and ``prompt``; other fields are copied along.
        store: Keyed by `completion_key`.
        sampling: Settings recorded with every completion (with each sample's own seed).
        n_samples: Completions per prompt (a recorded teacher has ``max_samples = 1``).
        teacher: Teacher name, recorded in every row and part of the settings digest.
        desc: Progress-bar label.

    Returns:
        Every stored completion of ``rows``, prompt by prompt in sample order.
    """
    config = settings_digest(teacher, sampling)
    if teacher.startswith("recorded:"):
        n_samples = 1
    missing = lambda row, s: (config, row["source"], row["id"], s) not in store  # noqa: E731
    if any(missing(row, s) for row in rows for s in range(n_samples)):
        backend = backend() if callable(backend) else backend
        n_samples = min(n_samples, getattr(backend, "max_samples", n_samples))
        pending = []

        def add(row: dict, s: int, text: str, tokens: int | None, finish: str | None, seed: int) -> None:
            pending.append({**row, "teacher": teacher, "backend": backend.name, "sample_index": s, "response": text,
                            "new_tokens": tokens, "finish_reason": finish, "sampling": {**asdict(sampling), "seed": seed},
                            "usage": getattr(backend, "last_usage", None), "config": config})
            if len(pending) >= getattr(backend, "batch_size", 1):
                store.append(pending)
                pending.clear()

        seed_of = lambda row, s: row_seed(sampling.seed, row["source"], row["id"], s)  # noqa: E731
        fresh = [row for row in rows if all(missing(row, s) for s in range(n_samples))]
        try:
            if n_samples > 1 and fresh and hasattr(backend, "generate_samples"):
                # One request per prompt for all its samples, seeded by the prompt (recorded as sample -1's seed).
                seeds = [seed_of(row, -1) for row in fresh]
                for index, s, text, tokens, finish in backend.generate_samples(
                        [r["prompt"] for r in fresh], n_samples, sampling, desc=desc, seeds=seeds):
                    add(fresh[index], s, text, tokens, finish, seeds[index])
                store.append(pending)
                pending.clear()
            for s in range(n_samples):  # every sample still missing, one pass per sample index
                todo = [row for row in rows if missing(row, s)]
                seeds = [seed_of(row, s) for row in todo]
                for index, text, tokens, finish in backend.generate([r["prompt"] for r in todo], sampling,
                                                                    seeds=seeds,
                                                                    desc=f"{desc} [sample {s + 1}/{n_samples}]"):
                    add(todo[index], s, text, tokens, finish, seeds[index])
                store.append(pending)
                pending.clear()
        finally:  # stopped (a cost cap, an error): what was answered is kept
            store.append(pending)
    by_key = {completion_key(row): row for row in store.rows if row["config"] == config}
    return [by_key[(config, r["source"], r["id"], s)] for r in rows for s in range(n_samples)
            if (config, r["source"], r["id"], s) in by_key]
