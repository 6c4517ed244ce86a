"""Architecture knowledge as data, keyed by ``config.model_type``.

Every algorithm reaches layers, projections and config fields through an :class:`ArchSpec`;
no other module hard-codes ``model.model.layers`` or a projection name. Paths are dotted and
relative to ``model.base_model`` (for blocks) or to one block (for projections), so the same
entry serves ``LlamaModel``, ``LlamaForCausalLM`` and ``LlamaForSequenceClassification``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from torch import nn


@dataclass(frozen=True)
class ArchSpec:
    """Where things live in one architecture family.

    Attributes:
        layers: path from ``base_model`` to the ``nn.ModuleList`` of blocks.
        embeddings: paths from ``base_model`` to the token (and position) embeddings.
        final_norm: path from ``base_model`` to the norm after the last block (``None`` if absent).
        q, k, v, o: per-block paths of the attention projections; ``qkv`` instead of q/k/v for a
            fused projection (GPT-2's ``c_attn``, output order q | k | v).
        up, gate, down: per-block FFN paths (``gate`` is ``None`` for non-gated MLPs).
        norms: per-block norm paths (pre- or post-norm) that scale the hidden width.
        conv1d: weights are stored ``[in, out]`` (GPT-2 ``Conv1D``) instead of ``[out, in]``.
        n_heads, n_kv_heads, ffn, hidden, n_layers, head_dim: config field names; ``n_kv_heads``
            or ``head_dim`` is ``None`` when the family has no such field.
        causal: decoder (causal LM) rather than encoder.
        attention_attrs: ``(attribute, quantity)`` pairs on the attention module (the parent of ``q`` /
            ``qkv``) that structured pruning keeps in sync with its weights; quantity is ``"heads"``,
            ``"kv_heads"``, ``"groups"`` (query heads per KV head), ``"inner"`` (heads x head_dim) or
            ``"hidden"``.
        head_dim_attr: attribute of the attention module holding the per-head width.
        outer_norms: paths from ``base_model`` of norms outside the blocks on the hidden width
            (besides ``final_norm``), e.g. BERT's embedding LayerNorm.
        outer_square: paths from ``base_model`` of projections outside the blocks that read and write
            the hidden width (BERT's pooler).
        embed_proj: paths from ``base_model`` of the projections between a narrower token embedding
            and the hidden width (OPT's ``project_in`` / ``project_out``; absent modules are skipped).
        embed_dim_field: config field of the token-embedding width when it may differ from the hidden
            width (OPT's ``word_embed_proj_dim``).
        embed_scale: attributes of the token embedding that hold ``sqrt(hidden)`` (Gemma), reset when
            the hidden width changes, as a reload from the smaller config computes them.
    """

    layers: str
    embeddings: tuple[str, ...]
    final_norm: str | None
    o: str
    up: str
    down: str
    norms: tuple[str, ...]
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None
    gate: str | None = None
    conv1d: bool = False
    n_heads: str = "num_attention_heads"
    n_kv_heads: str | None = "num_key_value_heads"
    ffn: str = "intermediate_size"
    hidden: str = "hidden_size"
    n_layers: str = "num_hidden_layers"
    head_dim: str | None = "head_dim"
    causal: bool = True
    attention_attrs: tuple[tuple[str, str], ...] = (("num_key_value_groups", "groups"),)
    head_dim_attr: str = "head_dim"
    outer_norms: tuple[str, ...] = ()
    outer_square: tuple[str, ...] = ()
    embed_proj: tuple[str, str] | None = None
    embed_dim_field: str | None = None
    embed_scale: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def attention_inputs(self) -> tuple[str, ...]:
        """Projections that read the block's hidden state for attention."""
        return (self.qkv,) if self.qkv else (self.q, self.k, self.v)

    @property
    def attention(self) -> str:
        """Per-block path of the attention module (the parent of the q / fused qkv projection)."""
        return (self.qkv or self.q).rpartition(".")[0]

    @property
    def ffn_inputs(self) -> tuple[str, ...]:
        """Projections that read the hidden state for the FFN (gate first when present)."""
        return (self.gate, self.up) if self.gate else (self.up,)


_LLAMA = ArchSpec(
    layers="layers",
    embeddings=("embed_tokens",),
    final_norm="norm",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    gate="mlp.gate_proj",
    up="mlp.up_proj",
    down="mlp.down_proj",
    norms=("input_layernorm", "post_attention_layernorm"),
)

_GEMMA = replace(_LLAMA, embed_scale=("embed_scale", "scalar_embed_scale"))

_GEMMA3 = ArchSpec(
    layers="layers",
    embeddings=("embed_tokens",),
    final_norm="norm",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    gate="mlp.gate_proj",
    up="mlp.up_proj",
    down="mlp.down_proj",
    norms=(
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    ),
    embed_scale=("embed_scale", "scalar_embed_scale"),
)

_GPT2 = ArchSpec(
    layers="h",
    embeddings=("wte", "wpe"),
    final_norm="ln_f",
    qkv="attn.c_attn",
    o="attn.c_proj",
    up="mlp.c_fc",
    down="mlp.c_proj",
    norms=("ln_1", "ln_2"),
    conv1d=True,
    n_heads="n_head",
    n_kv_heads=None,
    ffn="n_inner",
    hidden="n_embd",
    n_layers="n_layer",
    head_dim=None,
    attention_attrs=(("num_heads", "heads"), ("split_size", "inner")),
)

_OPT = ArchSpec(
    layers="decoder.layers",
    embeddings=("decoder.embed_tokens", "decoder.embed_positions"),
    final_norm="decoder.final_layer_norm",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.out_proj",
    up="fc1",
    down="fc2",
    norms=("self_attn_layer_norm", "final_layer_norm"),
    n_kv_heads=None,
    ffn="ffn_dim",
    head_dim=None,
    attention_attrs=(("num_heads", "heads"), ("embed_dim", "hidden")),
    embed_proj=("decoder.project_in", "decoder.project_out"),
    embed_dim_field="word_embed_proj_dim",
)

_BERT = ArchSpec(
    layers="encoder.layer",
    embeddings=("embeddings.word_embeddings", "embeddings.position_embeddings", "embeddings.token_type_embeddings"),
    final_norm=None,
    q="attention.self.query",
    k="attention.self.key",
    v="attention.self.value",
    o="attention.output.dense",
    up="intermediate.dense",
    down="output.dense",
    norms=("attention.output.LayerNorm", "output.LayerNorm"),
    n_kv_heads=None,
    head_dim=None,
    causal=False,
    attention_attrs=(("num_attention_heads", "heads"), ("all_head_size", "inner")),
    head_dim_attr="attention_head_size",
    outer_norms=("embeddings.LayerNorm",),
    outer_square=("pooler.dense",),
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _GEMMA,
    "gemma2": _GEMMA3,
    "gemma3_text": _GEMMA3,
    "gpt2": _GPT2,
    "opt": _OPT,
    "bert": _BERT,
    "roberta": _BERT,
}


class UnsupportedArchitectureError(ValueError):
    """The model's ``model_type`` has no entry in :data:`ARCHITECTURES`."""


def arch_spec(model: nn.Module) -> ArchSpec:
    """The table entry for ``model`` (any head class), or a clear error naming what is supported."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        allowed = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedArchitectureError(
            f"model_type={model_type!r} is not in hf_compress's architecture table; supported: {allowed}"
        )
    return ARCHITECTURES[model_type]


def base_model(model: nn.Module) -> nn.Module:
    """The backbone (``model.base_model`` for transformers models, else the model itself)."""
    return getattr(model, "base_model", model)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of transformer blocks."""
    return base_model(model).get_submodule(arch_spec(model).layers)


def config_value(config, name: str | None, default=None):
    """A config field through its family-specific name (``None`` name -> ``default``)."""
    if name is None:
        return default
    value = getattr(config, name, None)
    return default if value is None else value


def num_heads(model: nn.Module) -> tuple[int, int]:
    """``(query heads, key/value heads)`` from the config (KV = query heads without GQA)."""
    spec, cfg = arch_spec(model), model.config
    heads = config_value(cfg, spec.n_heads)
    return heads, config_value(cfg, spec.n_kv_heads, heads)


def head_dim(model: nn.Module) -> int:
    """Per-head width: the explicit ``head_dim`` field, else hidden // heads."""
    spec, cfg = arch_spec(model), model.config
    heads = config_value(cfg, spec.n_heads)
    return config_value(cfg, spec.head_dim, config_value(cfg, spec.hidden) // heads)
