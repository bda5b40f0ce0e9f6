"""Interventions along a direction of the residual stream: ablation by hooks, activation addition by a hook, and
ablation baked into the weights (weight orthogonalization), after Arditi et al. 2024 (andyrdt/refusal_direction,
``pipeline/utils/hook_utils.py`` and ``orthogonalize_*_weights``).

Layer ``l`` is the residual stream entering block ``l`` (the authors' ``resid_pre``; transformers'
``hidden_states[l]`` for ``l < num_hidden_layers``). The modules are found by the names Llama-style decoders use
(``model.layers[i].self_attn.o_proj``, ``.mlp.down_proj``, ``model.embed_tokens``: Llama, Mistral, Qwen2, Gemma,
SmolLM2); any other architecture is refused with a clear error rather than edited wrongly.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def decoder_parts(model) -> tuple[list, list, list]:
    """``(blocks, attention modules, MLP modules)`` of a Llama-style decoder.

    Raises:
        ValueError: The model is not a Llama-style decoder (no ``model.layers`` with ``self_attn`` and ``mlp``).
    """
    body = getattr(model, "model", None)
    blocks = list(getattr(body, "layers", []) or [])
    if not blocks or not all(hasattr(b, "self_attn") and hasattr(b, "mlp") for b in blocks):
        raise ValueError(f"{type(model).__name__}: not a Llama-style decoder (model.layers[i].self_attn / .mlp); the "
                         "refusal-direction interventions support Llama, Mistral, Qwen2, Gemma and SmolLM2 models")
    return blocks, [b.self_attn for b in blocks], [b.mlp for b in blocks]


def _unit(direction: torch.Tensor) -> torch.Tensor:
    return direction / (direction.norm() + 1e-8)


def _remove(activation: torch.Tensor, unit: torch.Tensor, coefficient: float) -> torch.Tensor:
    unit = unit.to(activation)
    return activation - coefficient * (activation @ unit).unsqueeze(-1) * unit


@contextmanager
def hooks(pre: list[tuple], post: list[tuple]):
    """Forward pre-hooks (called with the module's args and kwargs) and forward hooks, removed on exit."""
    handles = [module.register_forward_pre_hook(hook, with_kwargs=True) for module, hook in pre]
    handles += [module.register_forward_hook(hook) for module, hook in post]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _pre_hook(change):
    """A pre-hook that replaces the module's first input (positional or ``hidden_states=``) by ``change(input)``."""
    def hook(module, args, kwargs):
        if args:
            return (change(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": change(kwargs["hidden_states"])}
    return hook


def _post_hook(change):
    """A forward hook that replaces the module's output (or its first element) by ``change(output)``."""
    def hook(module, inputs, output):
        if isinstance(output, tuple):
            return (change(output[0]), *output[1:])
        return change(output)
    return hook


def ablation_hooks(model, direction: torch.Tensor, coefficient: float = 1.0, start_layer: int = 0) -> tuple[list, list]:
    """Directional ablation at every layer from ``start_layer``: the direction's component is removed from the
    input of each block and from the output of each attention and MLP module (the authors' hooks;
    ``coefficient`` < 1 removes only that share of it: the surgical paper's ``ablation_coeff``)."""
    blocks, attention, mlps = decoder_parts(model)
    unit = _unit(direction.float())
    change = lambda x: _remove(x, unit, coefficient)  # noqa: E731
    pre = [(block, _pre_hook(change)) for block in blocks[start_layer:]]
    post = [(module, _post_hook(change)) for module in attention[start_layer:] + mlps[start_layer:]]
    return pre, post


def addition_hooks(model, vector: torch.Tensor, layer: int, coefficient: float) -> tuple[list, list]:
    """Activation addition: ``coefficient × vector`` added to the input of block ``layer`` at every position (the
    authors add the raw difference-in-means vector, not a unit one: coefficient 1 adds the harmful-minus-harmless
    mean difference, -1 subtracts it)."""
    blocks, _, _ = decoder_parts(model)
    return [(blocks[layer], _pre_hook(lambda x: x + coefficient * vector.to(x)))], []


def _orthogonalized(matrix: torch.Tensor, unit: torch.Tensor, coefficient: float, output_dim: int) -> torch.Tensor:
    """``matrix`` with ``coefficient`` × its component along ``unit`` removed from the vectors it writes.

    Args:
        output_dim: The axis of ``matrix`` that is the residual stream (0 for a Linear's ``(out, in)`` weight, 1
            for an embedding's ``(vocab, d_model)``).
    """
    import torch

    unit = unit.to(device=matrix.device, dtype=torch.float32)
    work = matrix.float()
    if output_dim == 0:
        work = work - coefficient * torch.outer(unit, unit @ work)
    else:
        work = work - coefficient * torch.outer(work @ unit, unit)
    return work.to(matrix.dtype)


def written_parameters(model) -> list[tuple[torch.nn.Parameter, int]]:
    """Every parameter that writes into the residual stream, with the axis that is the stream: the input
    embedding, each attention output projection and each MLP down projection (and their biases, if any)."""
    blocks, attention, mlps = decoder_parts(model)
    found = [(model.get_input_embeddings().weight, 1)]
    for module in [a.o_proj for a in attention] + [m.down_proj for m in mlps]:
        found.append((module.weight, 0))
        if getattr(module, "bias", None) is not None:
            found.append((module.bias, 0))
    return found


def tied(model) -> bool:
    """Whether the output embedding is the input embedding's matrix (SmolLM2, Gemma)."""
    output = model.get_output_embeddings()
    return output is not None and output.weight is model.get_input_embeddings().weight


def untie(model) -> None:
    """Give the output embedding its own copy of the shared matrix (and say so in the config, so it is saved)."""
    import torch

    output = model.get_output_embeddings()
    output.weight = torch.nn.Parameter(output.weight.detach().clone(), requires_grad=output.weight.requires_grad)
    model.config.tie_word_embeddings = False


def retie(model) -> None:
    """Share the input embedding's matrix with the output embedding again (undo `untie`)."""
    model.get_output_embeddings().weight = model.get_input_embeddings().weight
    model.config.tie_word_embeddings = True


def orthogonalize_weights(model, direction: torch.Tensor, coefficient: float = 1.0, keep_unembedding: bool = True
                          ) -> None:
    """Bake directional ablation into the weights, in place: no matrix that writes to the residual stream can
    write along the direction any more, so no hook is needed (the authors' weight orthogonalization).

    Args:
        keep_unembedding: For a model whose input and output embeddings are tied (SmolLM2, Gemma), first give the
            output embedding its own copy, so it stays as it was and the weights compute exactly what the ablation
            hooks compute (the hooks never touch the unembedding). False: orthogonalize the shared matrix, which
            changes the output embedding too, as the authors' code does for Gemma.
    """
    import torch

    if keep_unembedding and tied(model):
        untie(model)
    unit = _unit(direction.float())
    with torch.no_grad():
        for weight, axis in written_parameters(model):
            if weight.dim() == 1:  # a bias writes itself: remove its component
                weight.copy_(_remove(weight.float(), unit, coefficient).to(weight.dtype))
            else:
                weight.copy_(_orthogonalized(weight, unit, coefficient, axis))


@contextmanager
def orthogonalized(model, direction: torch.Tensor, coefficient: float = 1.0, keep_unembedding: bool = True):
    """`orthogonalize_weights` for the duration of the block; the original weights (and ties) are restored after."""
    import torch

    saved = [(weight, weight.detach().to("cpu", copy=True)) for weight, _ in written_parameters(model)]
    was_tied = tied(model)
    orthogonalize_weights(model, direction, coefficient, keep_unembedding)
    try:
        yield model
    finally:
        with torch.no_grad():
            for weight, original in saved:
                weight.copy_(original.to(weight.device))
        if was_tied and not tied(model):
            retie(model)
