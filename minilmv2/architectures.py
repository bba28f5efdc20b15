"""Where each encoder architecture keeps its embeddings, layers and Q/K/V projections.

MiniLMv2 reads the query, key and value projections of one self-attention layer, so the distiller needs to
run an encoder up to a layer and call that layer's projections directly (transformers 5 uses SDPA and returns
no attention maps). Supporting a new architecture is one `EncoderLayout` entry below, keyed by the config's
`model_type`, with dotted attribute paths relative to the base model (e.g. `BertModel`, not `BertForMaskedLM`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask

from minilmv2.relations import KEY, QUERY, VALUE


@dataclass(frozen=True)
class EncoderLayout:
    """Dotted paths to the parts of an encoder that MiniLMv2 touches."""

    layers: str = "encoder.layer"  # the ModuleList of transformer layers
    query: str = "attention.self.query"  # inside one layer: the Q/K/V nn.Linear projections
    key: str = "attention.self.key"
    value: str = "attention.self.value"
    # Applied after `embeddings` when the model has it (ELECTRA projects a small embedding to the hidden size).
    embedding_projection: str | None = None

    def projection_path(self, kind: int) -> str:
        return {QUERY: self.query, KEY: self.key, VALUE: self.value}[kind]


ENCODER_LAYOUTS: dict[str, EncoderLayout] = {
    "bert": EncoderLayout(),
    "roberta": EncoderLayout(),
    "xlm-roberta": EncoderLayout(),
    "electra": EncoderLayout(embedding_projection="embeddings_project"),
}


def base_model(model: nn.Module) -> nn.Module:
    """The bare encoder inside a task model (BertForMaskedLM -> BertModel); the model itself otherwise."""
    inner = getattr(model, "base_model", model)
    return inner if inner is not None else model


def layout_for(model: nn.Module) -> EncoderLayout:
    """The layout of `model`'s architecture; ValueError naming the supported ones otherwise."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ENCODER_LAYOUTS:
        supported = ", ".join(sorted(ENCODER_LAYOUTS))
        raise ValueError(
            f"model_type {model_type!r} is not supported; supported architectures: {supported} "
            "(add an EncoderLayout in minilmv2/architectures.py)"
        )
    return ENCODER_LAYOUTS[model_type]


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    return base_model(model).get_submodule(layout_for(model).layers)


def qkv_projection(model: nn.Module, layer_index: int, kind: int) -> nn.Linear:
    """The nn.Linear producing vector kind `kind` (1=Q, 2=K, 3=V) in layer `layer_index` (0-based)."""
    return encoder_layers(model)[layer_index].get_submodule(layout_for(model).projection_path(kind))


def embedding_modules(model: nn.Module) -> list[nn.Module]:
    """Modules that turn token ids into the first layer's input, in order."""
    base, layout = base_model(model), layout_for(model)
    modules = [base.embeddings]
    if layout.embedding_projection and hasattr(base, layout.embedding_projection):
        modules.append(base.get_submodule(layout.embedding_projection))
    return modules


def qkv_states(
    model: nn.Module,
    layer: int,
    kinds: set[int],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
) -> dict[int, torch.Tensor]:
    """Run `model` up to its `layer`-th layer (1-based) and return that layer's Q/K/V projections.

    Layers above `layer` and the layer's own attention, FFN and output are never run: the loss reads only
    the projections of the layer's input.

    Args: input_ids, attention_mask (B, S) (1 = real token), token_type_ids (B, S) or None.
    Returns: {kind: (B, S, H)} for each requested kind (1=Q, 2=K, 3=V).
    """
    base = base_model(model)
    embed_kwargs = {"input_ids": input_ids}
    if token_type_ids is not None:
        embed_kwargs["token_type_ids"] = token_type_ids
    hidden = base.embeddings(**embed_kwargs)
    for module in embedding_modules(model)[1:]:
        hidden = module(hidden)
    layers = encoder_layers(model)
    if layer > 1:
        # A sample with no real token would make every attention row fully masked (NaN under SDPA); let it
        # attend to its padding instead. Its weight in the loss is zero either way.
        model_mask = attention_mask.masked_fill(~attention_mask.bool().any(dim=1, keepdim=True), 1)
        layer_mask = create_bidirectional_mask(config=base.config, inputs_embeds=hidden, attention_mask=model_mask)
        for transformer_layer in layers[: layer - 1]:
            hidden = transformer_layer(hidden, layer_mask)
    last = layers[layer - 1]
    layout = layout_for(model)
    return {kind: last.get_submodule(layout.projection_path(kind))(hidden) for kind in sorted(kinds)}
