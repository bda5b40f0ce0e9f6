"""A generation backend that records each response's log-probability while it generates (the paper form's
log p(y | x, s) without a second forward pass)."""

from __future__ import annotations


def scoring_backend(model, tokenizer, batch_size: int = 16):
    """A `porover.generation.TransformersBackend` that also scores what it generates.

    Each response's token ids and the sum of their log-probabilities under the model (raw logits, before
    temperature or top-p) are left in ``last_usage`` while its result is yielded, so
    `porover.generation.sample_completions` stores them with the response (its ``usage`` field): the paper
    form's log p(y | x, s) then needs no second forward pass.
    """
    from porover.generation import TransformersBackend

    class ScoringBackend(TransformersBackend):
        def _generate_batch(self, texts, sampling, seeds):
            import torch
            from transformers import LogitsProcessorList

            from porover.generation.local import RowSampler

            inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            inputs = inputs.to(self.model.device)
            options = {}
            if sampling.temperature > 0:  # one generator per row, as the base backend samples
                options["logits_processor"] = LogitsProcessorList([RowSampler(seeds, sampling.temperature,
                                                                              sampling.top_p)])
            with torch.inference_mode():
                out = self.model.generate(**inputs, max_new_tokens=self._budget(inputs["input_ids"].shape[1], sampling),
                                          pad_token_id=self.tokenizer.pad_token_id, do_sample=False, top_k=None,
                                          top_p=None, temperature=None, output_logits=True,
                                          return_dict_in_generate=True, **options)
                new = out.sequences[:, inputs["input_ids"].shape[1]:]
                logp = torch.stack([torch.log_softmax(step.float(), dim=-1).gather(-1, new[:, t, None])[:, 0]
                                    for t, step in enumerate(out.logits)], dim=1).cpu()  # raw logits, step by step
            rows = new.tolist()
            return [(text, length, finish, {"response_ids": row[:length], "response_logprob": float(scores[:length].sum())})
                    for (text, length, finish), row, scores in zip(self._decode_new(rows), rows, logp)]

        def _yielded(self, result):
            # The scores ride on the backend while their response is yielded (sample_completions reads them then).
            text, count, finish, self.last_usage = result
            return text, count, finish

    return ScoringBackend(model, tokenizer, batch_size=batch_size)
