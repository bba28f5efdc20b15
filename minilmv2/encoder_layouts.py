"""The architecture facts, one table: `ENCODER_LAYOUTS`, keyed by the config's `model_type` (no torch here).

Where each supported encoder keeps its layers, its attention (or its three Q/K/V projections), which config fields
a student must resize, whether its position ids start after the padding index, and its masked-LM head. Adding an
architecture is one `EncoderLayout` line; every other module asks this table (`layout_for`, `usable_positions`,
`first_position_id`, `lm_head_path`, `seq2seq_model_types`); minilmv2.architectures captures Q/K/V with it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncoderLayout:
    """Where one architecture keeps what MiniLMv2 reads; dotted paths, relative to the base model or a layer."""

    layers: str = "encoder.layer"  # the ModuleList of transformer layers
    # Inside a layer: the module that calls the AttentionInterface function (it is passed to it as `module`).
    # None: the architecture computes attention in its own code, and `projections` are hooked instead.
    attention: str | None = "attention.self"
    # Inside a layer: the separate Q, K and V nn.Linear projections, if the architecture has them.
    projections: tuple[str, str, str] | None = ("attention.self.query", "attention.self.key", "attention.self.value")
    # Inside a layer: one nn.Linear whose output is [Q; K; V] in three equal blocks (ModernBERT's Wqkv).
    fused_projection: str | None = None
    # Student config fields and what they follow: "hidden" (student hidden size), "ffn" (student FFN size) or
    # "head" (hidden / heads). A field other than the FFN one is set only when the teacher's config has it.
    sized_fields: tuple[tuple[str, str], ...] = (("intermediate_size", "ffn"),)
    # Position ids start after the padding index (RoBERTa's embeddings): pad_token_id + 1 positions are reserved.
    position_offset: bool = False
    # Attribute path(s) of the masked-LM head in the *ForMaskedLM model, applied in turn to the hidden states;
    # None: hf_run_seq2seq.py does not fine-tune this architecture.
    lm_head: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.attention is None and self.projections is None:
            raise ValueError("an EncoderLayout needs the attention module or the Q/K/V projections to capture")
        if (self.projections is None) == (self.fused_projection is None):
            raise ValueError("an EncoderLayout names either three Q/K/V projections or one fused projection")


ENCODER_LAYOUTS: dict[str, EncoderLayout] = {
    "bert": EncoderLayout(lm_head=("cls",)),
    "roberta": EncoderLayout(position_offset=True, lm_head=("lm_head",)),
    "xlm-roberta": EncoderLayout(position_offset=True, lm_head=("lm_head",)),
    "camembert": EncoderLayout(position_offset=True),  # RoBERTa's code under another name
    # ELECTRA projects a small embedding to the hidden size; a student embeds straight into its hidden size.
    "electra": EncoderLayout(
        sized_fields=(("intermediate_size", "ffn"), ("embedding_size", "hidden")),
        lm_head=("generator_predictions", "generator_lm_head"),
    ),
    "distilbert": EncoderLayout(
        layers="transformer.layer",
        attention="attention",
        projections=("attention.q_lin", "attention.k_lin", "attention.v_lin"),
        sized_fields=(("hidden_dim", "ffn"),),  # dim, n_layers, n_heads are aliased by the config's attribute_map
    ),
    # Rotary embeddings are applied inside `attn`, after Wqkv: the attention function sees the rotated Q and K.
    "modernbert": EncoderLayout(layers="layers", attention="attn", projections=None, fused_projection="attn.Wqkv"),
    "mpnet": EncoderLayout(
        attention=None, projections=("attention.attn.q", "attention.attn.k", "attention.attn.v"), position_offset=True
    ),
    "deberta-v2": EncoderLayout(
        attention=None,
        projections=("attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj"),
        sized_fields=(
            ("intermediate_size", "ffn"),
            ("embedding_size", "hidden"),
            ("pooler_hidden_size", "hidden"),
            ("attention_head_size", "head"),
        ),
    ),
}


def layout_for(model_or_config: object) -> EncoderLayout:
    """The layout of a model's (or config's) architecture; ValueError naming the supported ones otherwise."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in ENCODER_LAYOUTS:
        supported = ", ".join(sorted(ENCODER_LAYOUTS))
        raise ValueError(
            f"model_type {model_type!r} is not supported; supported architectures: {supported} "
            "(add an EncoderLayout in minilmv2/encoder_layouts.py)"
        )
    return ENCODER_LAYOUTS[model_type]


def usable_positions(config) -> int | None:
    """Sequence length the position embeddings allow: max_position_embeddings, less the pad_token_id + 1 positions
    an offset architecture reserves; None when the config has no position table (relative positions only)."""
    positions = getattr(config, "max_position_embeddings", None)
    return positions - first_position_id(config) if positions else positions


def first_position_id(config) -> int:
    """The position id of a sequence's first token: pad_token_id + 1 in offset architectures, else 0."""
    layout = ENCODER_LAYOUTS.get(getattr(config, "model_type", None))
    return (config.pad_token_id or 0) + 1 if layout is not None and layout.position_offset else 0


def seq2seq_model_types() -> list[str]:
    """The architectures hf_run_seq2seq.py fine-tunes: those with a masked-LM head in the table."""
    return sorted(name for name, layout in ENCODER_LAYOUTS.items() if layout.lm_head is not None)


def lm_head_path(model_type: str) -> tuple[str, ...]:
    """Attribute path(s) of the masked-LM head of `model_type`; ValueError naming the supported ones otherwise."""
    layout = ENCODER_LAYOUTS.get(model_type)
    if layout is None or layout.lm_head is None:
        raise ValueError(
            f"model_type {model_type!r} has no masked-LM head for sequence-to-sequence fine-tuning; supported: "
            + ", ".join(seq2seq_model_types())
        )
    return layout.lm_head
