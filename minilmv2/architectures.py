"""How the distiller captures Q/K/V with the architecture facts (one table, minilmv2.encoder_layouts).

MiniLMv2 compares the query, key and value vectors of one self-attention layer. The distiller does not rebuild
any part of a model: each model runs its *own* forward (its embeddings, masks, positions, norms), and the Q/K/V
of the chosen layer are taken exactly as that layer's attention would use them. The forward then stops at once
(a private exception, caught here), so no layer above runs and the chosen layer's attention, output projection
and FFN never run either.

Two ways to capture, both declared per architecture in `ENCODER_LAYOUTS` (keyed by the config's `model_type`):

- Models that call attention through `transformers.AttentionInterface` (BERT, RoBERTa, XLM-R, ELECTRA,
  DistilBERT, ModernBERT): for the length of one forward, the model's attention implementation is switched to
  `minilmv2_capture`, a function that runs SDPA in the layers below and, in the chosen layer, receives
  (B, heads, S, d) Q/K/V *after* any rotary embedding (ModernBERT rotates Q and K inside the attention module).
- Models with their own attention code (MPNet, DeBERTa-v2/v3): forward hooks on the chosen layer's Q/K/V
  nn.Linear projections. No rotary embeddings there: what the projections return is what the scores use.

Adding an architecture: one `EncoderLayout` line in minilmv2/encoder_layouts.py (the table, importable without
torch). Paths are relative to the base model (`BertModel`, not `BertForMaskedLM`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from minilmv2.encoder_layouts import (  # noqa: F401 (the table's names, re-exported for the modules that capture)
    ENCODER_LAYOUTS,
    EncoderLayout,
    first_position_id,
    layout_for,
    lm_head_path,
    seq2seq_model_types,
    usable_positions,
)
from minilmv2.relations import KEY, QUERY, VALUE

CAPTURE_IMPLEMENTATION = "minilmv2_capture"


def base_model(model: nn.Module) -> nn.Module:
    """The bare encoder inside a task model (BertForMaskedLM -> BertModel); the model itself otherwise."""
    inner = getattr(model, "base_model", model)
    return inner if inner is not None else model


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    return base_model(model).get_submodule(layout_for(model).layers)


def qkv_projection(model: nn.Module, layer_index: int, kind: int) -> nn.Linear:
    """The nn.Linear producing vector kind `kind` (1=Q, 2=K, 3=V) in layer `layer_index` (0-based).

    Only for architectures with separate projections; their output is Q/K/V before any rotary embedding.
    """
    layout = layout_for(model)
    if layout.projections is None:
        raise ValueError(
            f"{model.config.model_type} has no separate Q/K/V projections (it has {layout.fused_projection})"
        )
    return encoder_layers(model)[layer_index].get_submodule(layout.projections[kind - 1])


# ---------------------------------------------------------------------------------------------------------
# Capture


class _Captured(BaseException):
    """Carries the captured states out of the model's forward. A BaseException, so that no `except Exception`
    in model code can swallow it."""

    def __init__(self, states: dict[int, torch.Tensor]):
        super().__init__()
        self.states = states


# Set on the chosen layer's attention module for the length of one capture only.
_TARGET = "_minilmv2_capture_target"


def _capture_attention(module, query, key, value, attention_mask, **kwargs):
    """AttentionInterface function: SDPA, except in the chosen layer, whose (B, heads, S, d) Q/K/V end the forward."""
    if getattr(module, _TARGET, False):
        raise _Captured({QUERY: query, KEY: key, VALUE: value})
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


# A function registered in AttentionInterface must also be in AttentionMaskInterface: for an unknown name
# masking_utils builds no padding mask at all. SDPA's boolean mask is what `sdpa_attention_forward` takes, and
# it carries ModernBERT's sliding window too.
AttentionInterface.register(CAPTURE_IMPLEMENTATION, _capture_attention)
AttentionMaskInterface.register(CAPTURE_IMPLEMENTATION, sdpa_mask)


def _configs(model: nn.Module) -> list:
    """Every distinct config object the model's modules read their attention implementation from."""
    configs = {id(model.config): model.config}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            configs.setdefault(id(config), config)
    return list(configs.values())


@contextmanager
def _attention_capture(model: nn.Module, target: nn.Module) -> Iterator[None]:
    configs = _configs(model)
    previous = [config._attn_implementation for config in configs]
    setattr(target, _TARGET, True)
    try:
        for config in configs:
            config._attn_implementation = CAPTURE_IMPLEMENTATION
        yield
    finally:
        for config, implementation in zip(configs, previous, strict=True):
            config._attn_implementation = implementation
        delattr(target, _TARGET)


@contextmanager
def _projection_capture(projections: dict[int, nn.Module], kinds: set[int]) -> Iterator[None]:
    captured: dict[int, torch.Tensor] = {}

    def hook(kind):
        def take(module, inputs, output):
            # DeBERTa with share_att_key also projects its 2-D relative embeddings with the same Linear layers,
            # after Q/K/V; only the (B, S, H) call on the layer's hidden states is the vector kind we want.
            if output.dim() == 3 and kind not in captured:
                captured[kind] = output
                if kinds <= captured.keys():
                    raise _Captured(dict(captured))

        return take

    handles = [projections[kind].register_forward_hook(hook(kind)) for kind in sorted(kinds)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def qkv_states(
    model: nn.Module,
    layer: int,
    kinds: set[int],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None = None,
) -> dict[int, torch.Tensor]:
    """Run `model`'s own forward up to its `layer`-th layer (1-based) and return that layer's Q/K/V.

    Q and K are taken as the layer's attention compares them (after rotary embeddings where the model has
    them). The forward stops there: no layer above runs, nor the layer's own attention, output and FFN.

    Args: input_ids, attention_mask (B, S) (1 = real token; None: no padding, and the model builds no mask),
    token_type_ids (B, S) or None (dropped for models that have none). Returns: {kind: (B, S, H)} for each
    requested kind (1=Q, 2=K, 3=V).
    """
    base, layout = base_model(model), layout_for(model)
    target_layer = encoder_layers(model)[layer - 1]
    inputs = {"input_ids": input_ids}
    if attention_mask is not None:
        # A sample with no real token would make every attention row fully masked (NaN under SDPA); let it attend
        # to its padding instead. Its weight in the loss is zero either way.
        inputs["attention_mask"] = attention_mask.masked_fill(~attention_mask.bool().any(dim=1, keepdim=True), 1)
    if token_type_ids is not None and _accepts_token_types(base):
        inputs["token_type_ids"] = token_type_ids
    if layout.attention is not None:
        capture = _attention_capture(base, target_layer.get_submodule(layout.attention))
    else:
        projections = {kind: qkv_projection(model, layer - 1, kind) for kind in (QUERY, KEY, VALUE)}
        capture = _projection_capture(projections, set(kinds))
    try:
        with capture:
            base(**inputs)
    except _Captured as captured:
        states = captured.states
    else:
        raise RuntimeError(f"layer {layer} of {type(base).__name__} never reached its attention; nothing captured")
    batch, seq = input_ids.shape
    # (B, heads, S, d) from the attention function, (B, S, H) from a projection hook
    return {
        kind: states[kind].transpose(1, 2).reshape(batch, seq, -1) if states[kind].dim() == 4 else states[kind]
        for kind in sorted(kinds)
    }


@functools.cache
def _forward_parameters(model_class: type) -> frozenset[str]:
    return frozenset(inspect.signature(model_class.forward).parameters)


def _accepts_token_types(base: nn.Module) -> bool:
    return "token_type_ids" in _forward_parameters(type(base))
