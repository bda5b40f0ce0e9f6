"""Training a refusal-token model: rows tokenized with their token first, and the LoRA trainer that trains the
new token rows at a rate of their own (`porover.methods.refusal_tokens.stage` runs it)."""

from __future__ import annotations

from porover.methods.refusal_tokens.tokens import TokenSpec, token_ids


def tokenized_rows(rows: list[dict], tokenizer, spec: TokenSpec, loss_on: str = "completion",
                   max_length: int | None = None) -> tuple[list[dict], int]:
    """Rows as ``input_ids`` + ``completion_mask`` for TRL (the prompt masked; the token, and unless
    ``loss_on == "token"`` the response, trained). Rows whose prompt leaves no room for the token within
    ``max_length`` are dropped; returns ``(examples, dropped)``.

    Raises:
        ValueError: The token is not the first completion token (the chat template split it).
    """
    ids = token_ids(tokenizer, spec)
    examples, dropped = [], 0
    for row in rows:
        messages = row["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        start = len(prompt_ids)
        if full_ids[:start] != prompt_ids or full_ids[start] != ids[row["refusal_token"]]:
            raise ValueError(f"row {row.get('source')}/{row.get('id')}: {row['refusal_token']!r} is not the first "
                             "token after the generation prompt")
        if max_length is not None and start + 1 > max_length:
            dropped += 1
            continue
        trained = len(full_ids) - start if loss_on == "completion" else 1
        examples.append({"input_ids": full_ids,
                         "completion_mask": [0] * start + [1] * trained + [0] * (len(full_ids) - start - trained)})
    return examples, dropped



def lora_token_trainer(base, token_learning_rate: float | None = None):
    """The LoRA trainer: the loss through the model's own forward (``Trainer.compute_loss``), the new token rows
    in a parameter group of their own (``token_learning_rate``), and adapters saved without the whole
    embedding matrix.

    The new rows start at the embeddings' mean, where P(token) at the first response position is ~1e-9 for
    SmolLM2: at a LoRA learning rate they need hundreds of steps to matter, hence a rate of their own.

    TRL's fused loss reads ``lm_head.weight`` directly, which under PEFT's trainable-token wrapper of the tied
    output layer is the base weight without the new token rows (and the wrapper has no ``bias``, so it fails).
    PEFT saves the whole (resized) embedding matrix with the adapter by default (+113 MB at 135M); the new
    rows are in the adapter already (``trainable_tokens_delta``), so it is left out.
    """
    import functools

    from transformers import Trainer

    class PlainLossSFTTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

        def create_optimizer(self, model=None):
            optimizer = super().create_optimizer(model)
            if token_learning_rate is not None and not getattr(self, "_token_group", False):
                rows = {id(p): p for name, p in (model or self.model).named_parameters()
                        if "trainable_tokens_delta" in name and p.requires_grad}
                for group in optimizer.param_groups:
                    group["params"] = [p for p in group["params"] if id(p) not in rows]
                optimizer.add_param_group({"params": list(rows.values()), "lr": token_learning_rate,
                                           "weight_decay": 0.0})
                self._token_group = True
            return optimizer

        def _save(self, output_dir=None, state_dict=None):
            model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
            model.save_pretrained = functools.partial(model.save_pretrained, save_embedding_layers=False)
            try:
                super()._save(output_dir, state_dict)
            finally:
                del model.save_pretrained  # the instance attribute goes; the method is back

    return PlainLossSFTTrainer
