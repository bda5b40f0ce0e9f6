"""In-process batched generation with a Hugging Face causal LM (CPU or GPU)."""

from __future__ import annotations

from collections.abc import Sequence

from porover.generation.sampling import Sampling, render_prompts
from porover.progress import progress


class RowSampler:
    """A logits processor that samples every row of a batch with its own ``torch.Generator``.

    It applies temperature and top-p itself, draws one token per row from that row's generator, and returns
    scores that are 0 for the drawn token and -inf elsewhere, so ``generate(do_sample=False)`` (greedy) takes
    exactly the drawn token. A row's draws depend only on its own seed and its own tokens, never on which
    other prompts share its batch: a resumed run (other batches) draws the same completions.

    Args:
        seeds: One seed per row of the batch.
        temperature: > 0.
        top_p: Nucleus mass in (0, 1].

    The generators live on the CPU (probabilities are moved there to draw), so a GPU and a CPU run seeded
    alike draw alike up to the numerics of the logits.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float) -> None:
        import torch

        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids, scores):
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= self.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs.cpu()
        picks = [torch.multinomial(row, 1, generator=generator).item()
                 for row, generator in zip(probs, self.generators, strict=True)]
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(picks)), torch.tensor(picks, device=scores.device)] = 0.0
        return out


class TransformersBackend:
    """In-process batched generation with a Hugging Face causal LM.

    Prompts are sorted by length so each batch pads little, decoded with the KV cache under
    ``torch.inference_mode``, and returned in the caller's order. Sampled decoding draws each prompt's
    tokens from its own generator (`RowSampler`), seeded per prompt (``seeds``), so batch composition
    never changes a completion.

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
        return render_prompts(self.tokenizer, [prompt], sampling.system_prompt)[0]

    def _budget(self, prompt_length: int, sampling: Sampling) -> int:
        """``max_new_tokens``, or with None what the model's context leaves after the prompt."""
        if sampling.max_new_tokens is not None:
            return sampling.max_new_tokens
        limit = getattr(self.model.config, "max_position_embeddings", None) or 4096
        return max(1, limit - prompt_length)

    def _generate_batch(self, texts: list[str], sampling: Sampling, seeds: list[int]) -> list[tuple[str, int, str]]:
        import torch
        from transformers import LogitsProcessorList

        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = inputs.to(self.model.device)
        options = {}
        if sampling.temperature > 0:
            options["logits_processor"] = LogitsProcessorList([RowSampler(seeds, sampling.temperature, sampling.top_p)])
        budget = self._budget(inputs["input_ids"].shape[1], sampling)
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, max_new_tokens=budget, pad_token_id=self.tokenizer.pad_token_id,
                do_sample=False, top_k=None, top_p=None, temperature=None, **options,
            )
        return self._decode_new(output[:, inputs["input_ids"].shape[1]:].tolist())

    def _decode_new(self, rows: list[list[int]]) -> list[tuple[str, int, str]]:
        """``(text, new_tokens, finish_reason)`` of each row of generated ids: cut at the first end-of-turn or pad
        token ("stop"), else the whole budget was used ("length")."""
        stops = {self.tokenizer.pad_token_id, *self._eos_ids()}
        results = []
        for row in rows:
            length = next((i for i, token in enumerate(row) if token in stops), None)
            finish = "length" if length is None else "stop"
            length = len(row) if length is None else length
            results.append((self.tokenizer.decode(row[:length], skip_special_tokens=True).strip(), length, finish))
        return results

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        return [eos] if isinstance(eos, int) else list(eos or [])

    def generate(self, prompts: Sequence[str], sampling: Sampling = Sampling(), desc: str = "generate",
                 seeds: Sequence[int] | None = None):
        """Generate one completion per prompt, yielding ``(index, text, new_tokens, finish_reason)`` batch by batch.

        ``finish_reason`` is ``"stop"`` (end-of-turn token) or ``"length"`` (the budget ran out). Yielding per
        batch lets callers store results as they appear, so a killed run loses at most one batch.

        Args:
            prompts: The user turns.
            sampling: Settings; with ``temperature > 0`` every prompt is sampled with its own generator.
            desc: Progress-bar label.
            seeds: One seed per prompt (None: ``sampling.seed`` for every prompt).
        """
        seeds = [sampling.seed] * len(prompts) if seeds is None else list(seeds)
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        texts = [self.render(prompt, sampling) for prompt in prompts]
        lengths = [len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        with progress(total=len(order), desc=desc, unit="prompt") as bar:
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                results = self._generate_batch([texts[i] for i in batch], sampling, [seeds[i] for i in batch])
                for index, result in zip(batch, results):
                    yield index, *self._yielded(result)
                bar.update(len(batch))

    def _yielded(self, result: tuple) -> tuple:
        """``(text, new_tokens, finish_reason)`` of one `_generate_batch` result, as `generate` yields it after
        the index.

        The hook exists so a subclass whose `_generate_batch` returns more per response (the EvoRefuse scoring
        backend's log-probabilities) keeps that extra part here and shares the batching loop above.
        """
        return result
