"""Stand-in models for rehearsing a run file on a CPU (`porover.rehearsal`): tiny random-initialised models of a
model id's architecture family, with that family's real tokenizer and chat template, built locally (no hub).

Llama 3 / 3.1 ids (Llama-3.1-8B and -Instruct, Llama Guard 2 and 3) get a ``LlamaForCausalLM`` with the real
model's depth, head ratio, RoPE settings, vocabulary and special-token ids, but a width of 16, so layer
settings (MOSR's target layers, representation layers) stay valid. The tokenizer is built from Meta's
tiktoken ranks file vendored in ``porover/data/llama3/`` (see its SOURCE.md: Llama 3 / 3.1 Community
Licenses) the way transformers converts it, with the special tokens of that Llama version; the chat templates
are the real ones where a verified copy exists (Llama 3.1 Instruct, Llama Guard 3), else stated in `STANDINS`.
(Endpoint models such as GPT-4o are stood in for by `porover.generation.standin_endpoint`.)
"""

from __future__ import annotations

import base64
import json
import lzma
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from porover.digests import digest_of, file_digest
from porover.models import cache_dir

LLAMA3_DIR = Path(__file__).resolve().parent / "data" / "llama3"
# Bump when what a stand-in folder holds changes (its cache key).
BUILD_VERSION = 2


def _special_tokens(version: str) -> list[str]:
    """The 256 special tokens after Llama 3's 128,000 ranks, named as transformers' converter names them."""
    if version == "3":
        named = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                 "<|reserved_special_token_1|>", "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
                 "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
        return named + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)]
    named = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
             "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>",
             "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    return named + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)]


@dataclass(frozen=True)
class StandIn:
    """How one model id is stood in for.

    Attributes:
        family: The architecture family (a transformers model type).
        tokenizer: Which Llama tokenizer (``"3"`` or ``"3.1"``: special-token names).
        chat_template: Vendored template file name under ``porover/data/llama3`` (None: no template, as the
            real model has none).
        eos_token: The tokenizer's end-of-sequence token, as the real tokenizer_config gives it.
        generation_eos: The ids generation stops at (the real generation_config's).
        note: What differs from the real model besides size and weights (empty: nothing else).
    """

    family: str
    tokenizer: str
    chat_template: str | None
    eos_token: str
    generation_eos: tuple[int, ...]
    note: str = ""


STANDINS = {
    "meta-llama/Llama-3.1-8B": StandIn("llama", "3.1", None, "<|end_of_text|>", (128001,),
                                       "no chat template, as the base model's tokenizer has none"),
    "meta-llama/Llama-3.1-8B-Instruct": StandIn("llama", "3.1", "llama3_1_instruct_chat_template.jinja",
                                                "<|eot_id|>", (128001, 128008, 128009)),
    "meta-llama/Llama-Guard-3-8B": StandIn("llama", "3.1", "llama_guard_3_8b_chat_template.jinja", "<|eot_id|>",
                                           (128001, 128008, 128009)),
    "meta-llama/Meta-Llama-Guard-2-8B": StandIn("llama", "3", "llama_guard_3_8b_chat_template.jinja",
                                                "<|eot_id|>", (128009,),
                                                "Llama Guard 3's chat template (Guard 2's own is not vendored: no "
                                                "verified copy was found); Guard 2's categories differ"),
}
# Llama-3.1-8B's shape (config.json of meta-llama/Llama-3.1-8B), width cut to 16 and the MLP in proportion.
LLAMA_3_1_8B = dict(hidden_size=16, intermediate_size=56, num_hidden_layers=32, num_attention_heads=4,
                    num_key_value_heads=1, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
                    rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=128000,
                    rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192, "rope_type": "llama3"})


def _ranks() -> dict[bytes, int]:
    text = lzma.decompress((LLAMA3_DIR / "tokenizer.model.xz").read_bytes()).decode()
    return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in text.splitlines() if line)}


@lru_cache(maxsize=2)
def _backend_json(version: str) -> str:
    """The `tokenizers` definition of Llama 3's tokenizer (converting the ranks takes seconds: done once)."""
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class _Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:  # without the tiktoken package
            return _ranks()

    specials = _special_tokens(version)
    backend = _Converter(vocab_file="vendored", extra_special_tokens=specials).converted()
    bos = "<|begin_of_text|>"
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                      special_tokens=[(bos, 128000)])])
    return backend.to_str()


def llama3_tokenizer(version: str = "3.1", chat_template: str | None = None, eos_token: str = "<|eot_id|>"):
    """Llama 3's fast tokenizer from the vendored ranks file, as transformers' Llama 3 converter builds it:
    byte-level BPE (ignore_merges) with Llama 3's split pattern, the version's 256 special tokens and
    ``<|begin_of_text|>`` prepended. No pad token, as the real one."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_backend_json(version))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token=eos_token,
                                        model_max_length=131072, clean_up_tokenization_spaces=False,
                                        model_input_names=["input_ids", "attention_mask"])
    if chat_template:
        tokenizer.chat_template = (LLAMA3_DIR / chat_template).read_text()
    return tokenizer


def _key(spec: StandIn, *parts) -> str:
    """The cache key of a stand-in: what it is built from (the vendored files it reads, by content) and how."""
    read = ["tokenizer.model.xz"] + ([spec.chat_template] if spec.chat_template else [])
    return digest_of([BUILD_VERSION, {name: file_digest(LLAMA3_DIR / name) for name in read}, spec, *parts])[:16]


def _save_atomically(target: Path, write) -> Path:
    if (target / "config.json").is_file():
        return target
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write(partial)
    try:
        partial.rename(target)
    except OSError:  # another process built it first
        shutil.rmtree(partial, ignore_errors=True)
    return target


def standin_model(model_id: str, seed: int = 0) -> Path:
    """The stand-in folder for a known model id (built once, cached by content under ``$POROVER_CACHE``).

    Raises:
        KeyError: No stand-in is known for ``model_id`` (see `STANDINS`).
    """
    spec = STANDINS[model_id]
    target = cache_dir() / "standins" / f"{model_id.replace('/', '--')}-{_key(spec, model_id, LLAMA_3_1_8B, seed)}"

    def write(folder: Path) -> None:
        import torch
        from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

        tokenizer = llama3_tokenizer(spec.tokenizer, spec.chat_template, spec.eos_token)
        eos = tokenizer.convert_tokens_to_ids(spec.eos_token)
        torch.manual_seed(seed)
        config = LlamaConfig(**LLAMA_3_1_8B, eos_token_id=list(spec.generation_eos) if len(spec.generation_eos) > 1
                             else eos)
        model = LlamaForCausalLM(config).to(torch.bfloat16)  # the real checkpoints are bf16
        model.generation_config = GenerationConfig(bos_token_id=128000, eos_token_id=list(spec.generation_eos),
                                                   do_sample=True, temperature=0.6, top_p=0.9)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "STANDIN.json").write_text(json.dumps({"stands_in_for": model_id, "random_init": True,
                                                         "seed": seed, "note": spec.note}, indent=1))

    return _save_atomically(target, write)
