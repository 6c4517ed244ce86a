"""Model surgery: cut attention heads (GQA-aware), FFN neurons, the hidden width and whole blocks.

Which rows and columns of which tensors belong together comes from the model table
(:mod:`hf_compress.models.table`) as :class:`Coupling` index maps; the importance criteria
(:mod:`hf_compress.pruning.structured`) aggregate over the very same maps, so the dependency
structure is written once. Units per structure:

* attention: ids ``0..H-1`` label the rows of query head ``h`` in ``q`` (and the q part of a fused
  ``qkv``) and the matching columns of ``o``; ids ``H..H+KV-1`` label the rows of KV head ``g`` in
  ``k`` and ``v``. Query head ``h`` reads KV head ``h // (H / KV)`` (transformers' ``repeat_kv``).
  Whole heads are removed, never parts of ``head_dim``, so RoPE is untouched.
* FFN: neuron ``j`` is row ``j`` of gate and up (GPT-2 ``c_fc``, OPT ``fc1``) and column ``j`` of down.
* hidden: channel ``c`` of the embeddings, every norm, every projection's input (readers) or output
  (writers) and the heads on top; a tied LM head is cut once, with its embedding.

Every public function validates its whole input before changing the model, replaces weights with
new smaller parameters, keeps module attributes in sync (``in_features``, Conv1D ``nf``/``nx``,
``normalized_shape``, ``embedding_dim``, the attention attributes of the table, ``layer_idx``) and
rewrites the config in the same call (:func:`sync_config`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .table import ArchSpec, arch_spec, base_model, decoder_layers
from .weights import is_prunable, weight_out_in


@dataclass(frozen=True)
class Coupling:
    """One module's indices along one axis that belong to structure units.

    Attributes:
        name: the module's full name (for messages and reports).
        module: an ``nn.Linear`` / ``Conv1D`` (axis ``"out"`` or ``"in"`` of its ``[out, in]`` view), an
            ``nn.Embedding`` (axis ``"in"``: the embedding width) or a norm (axis ``"out"``: its vector).
        axis: ``"out"`` or ``"in"``.
        units: LongTensor ``[size along axis]``, the unit id of each index.
    """

    name: str
    module: nn.Module
    axis: str
    units: torch.Tensor

    def tensors(self) -> list[tuple[nn.Parameter, int]]:
        """``(parameter, dim)`` pairs whose ``dim`` runs along this coupling's axis."""
        module, out = self.module, self.axis == "out"
        if isinstance(module, nn.Embedding):
            return [(module.weight, 1)]
        if not is_prunable(module):  # a norm: weight (and bias) vectors
            return [(p, 0) for p in (module.weight, getattr(module, "bias", None)) if p is not None]
        conv = not isinstance(module, nn.Linear)
        dim = (0 if out else 1) if not conv else (1 if out else 0)
        pairs = [(module.weight, dim)]
        if out and module.bias is not None:
            pairs.append((module.bias, 0))
        return pairs


@dataclass
class LayerShape:
    """Per-block dims: query heads, KV heads, per-head width, FFN width."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


# ----------------------------------------------------------------------------- reading shapes


def _out(module: nn.Module) -> int:
    return weight_out_in(module).shape[0]


def _in(module: nn.Module) -> int:
    return weight_out_in(module).shape[1]


def attention_module(block: nn.Module, spec: ArchSpec) -> nn.Module:
    return block.get_submodule(spec.attention)


def block_shape(block: nn.Module, spec: ArchSpec) -> LayerShape:
    """The dims one block's weights have now (a fused ``qkv`` means KV heads = query heads)."""
    d = int(getattr(attention_module(block, spec), spec.head_dim_attr))
    if spec.qkv:
        heads = kv = _out(block.get_submodule(spec.qkv)) // (3 * d)
    else:
        heads, kv = _out(block.get_submodule(spec.q)) // d, _out(block.get_submodule(spec.k)) // d
    return LayerShape(heads, kv, d, _out(block.get_submodule(spec.up)))


def hidden_width(model: nn.Module) -> int:
    """The residual width, read from block 0's first attention reader."""
    spec = arch_spec(model)
    return _in(decoder_layers(model)[0].get_submodule(spec.attention_inputs[0]))


def layer_shapes(model: nn.Module) -> list[dict[str, int]]:
    """Per-block ``{"num_heads", "num_kv_heads", "head_dim", "ffn"}`` (what a per-layer config records)."""
    spec = arch_spec(model)
    return [block_shape(block, spec).to_dict() for block in decoder_layers(model)]


# ----------------------------------------------------------------------------- couplings


def _rows(units: Sequence[int], width: int) -> torch.Tensor:
    """Unit id of every row when each unit owns ``width`` consecutive rows."""
    return torch.tensor(units, dtype=torch.long).repeat_interleave(width)


def attention_couplings(model: nn.Module, index: int) -> tuple[list[Coupling], LayerShape]:
    """Couplings of block ``index``'s attention: ids ``0..H-1`` query heads, ``H..H+KV-1`` KV heads."""
    spec = arch_spec(model)
    block = decoder_layers(model)[index]
    shape = block_shape(block, spec)
    heads, kv, d = shape.num_heads, shape.num_kv_heads, shape.head_dim
    prefix = f"{spec.layers}.{index}."
    q_units = _rows(range(heads), d)
    kv_units = _rows(range(heads, heads + kv), d)
    couplings = []
    if spec.qkv:
        units = torch.cat([q_units, kv_units, kv_units])
        couplings.append(Coupling(prefix + spec.qkv, block.get_submodule(spec.qkv), "out", units))
    else:
        for path, units in ((spec.q, q_units), (spec.k, kv_units), (spec.v, kv_units)):
            couplings.append(Coupling(prefix + path, block.get_submodule(path), "out", units))
    couplings.append(Coupling(prefix + spec.o, block.get_submodule(spec.o), "in", q_units))
    return couplings, shape


def ffn_couplings(model: nn.Module, index: int) -> list[Coupling]:
    """Couplings of block ``index``'s FFN neurons (gate/up rows, down columns)."""
    spec = arch_spec(model)
    block = decoder_layers(model)[index]
    prefix = f"{spec.layers}.{index}."
    width = _out(block.get_submodule(spec.up))
    units = torch.arange(width)
    couplings = [Coupling(prefix + p, block.get_submodule(p), "out", units) for p in spec.ffn_inputs]
    couplings.append(Coupling(prefix + spec.down, block.get_submodule(spec.down), "in", units))
    return couplings


def _optional(root: nn.Module, path: str | None) -> nn.Module | None:
    if path is None:
        return None
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def hidden_couplings(model: nn.Module) -> list[Coupling]:
    """Every tensor axis on the residual width, channel ``c`` labelled ``c``.

    A tied output embedding is left out (it is the input embedding's parameter).

    Raises:
        ValueError: a parameter with a hidden-sized axis that the table does not describe (e.g. an MLM
            head), so the cut would be incomplete.
    """
    spec, base = arch_spec(model), base_model(model)
    width = hidden_width(model)
    units = torch.arange(width)
    couplings: list[Coupling] = []

    def add(name: str, module: nn.Module | None, axis: str) -> None:
        if module is not None:
            couplings.append(Coupling(name, module, axis, units))

    proj_in, proj_out = (_optional(base, p) for p in (spec.embed_proj or (None, None)))
    for path in spec.embeddings:
        emb = _optional(base, path)
        if emb is not None and emb.embedding_dim == width:
            add(path, emb, "in")
    add(spec.embed_proj[0] if proj_in is not None else "", proj_in, "out")
    add(spec.embed_proj[1] if proj_out is not None else "", proj_out, "in")
    for path in (spec.final_norm, *spec.outer_norms):
        add(path or "", _optional(base, path), "out")
    for path in spec.outer_square:
        add(path, _optional(base, path), "in")
        add(path, _optional(base, path), "out")
    for i, block in enumerate(decoder_layers(model)):
        prefix = f"{spec.layers}.{i}."
        for path in (*spec.attention_inputs, *spec.ffn_inputs):
            add(prefix + path, block.get_submodule(path), "in")
        for path in (spec.o, spec.down):
            add(prefix + path, block.get_submodule(path), "out")
        for path in spec.norms:
            add(prefix + path, _optional(block, path), "out")
    couplings += _head_couplings(model, width, units)
    _check_complete(model, couplings, width)
    return couplings


def _head_couplings(model: nn.Module, width: int, units: torch.Tensor) -> list[Coupling]:
    """Linears outside the backbone that read the hidden width (LM head unless tied, classifiers)."""
    base = base_model(model)
    if base is model:
        return []
    inside = {id(m) for m in base.modules()}
    tied = _tied_output(model)
    found = []
    for name, module in model.named_modules():
        if id(module) in inside or not isinstance(module, nn.Linear) or module is tied:
            continue
        if module.in_features == width and module.out_features != width:
            found.append(Coupling(name, module, "in", units))
    return found


def _tied_output(model: nn.Module) -> nn.Module | None:
    """The output embedding when it shares its weight with the input embedding."""
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if out is not None and emb is not None and out.weight is emb.weight:
        return out
    return None


def _check_complete(model: nn.Module, couplings: list[Coupling], width: int) -> None:
    spec = arch_spec(model)
    known = {id(c.module) for c in couplings}
    for block in decoder_layers(model):  # projections cut only along other axes (o's input, ...)
        for path in (spec.qkv, spec.q, spec.k, spec.v, spec.o, spec.up, spec.gate, spec.down):
            if path:
                known.add(id(block.get_submodule(path)))
    tied = _tied_output(model)
    if tied is not None:
        known.add(id(tied))
    for name, module in model.named_modules():
        if id(module) in known:
            continue
        for pname, param in module.named_parameters(recurse=False):
            if width in param.shape:
                raise ValueError(
                    f"hidden pruning: {name}.{pname} (shape {list(param.shape)}) has the hidden width {width} "
                    f"but model_type={model.config.model_type!r}'s table entry does not say how to cut it; "
                    "load the bare model or a causal-LM / sequence-classification head"
                )


# ----------------------------------------------------------------------------- slicing modules


def _param(new: torch.Tensor, old: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(new.detach().clone().contiguous(), requires_grad=old.requires_grad)


def _cut_projection(module: nn.Module, axis: str, idx: torch.Tensor) -> None:
    """Keep ``idx`` along ``axis`` of a Linear / Conv1D (bias follows the output axis)."""
    w = weight_out_in(module)
    idx = idx.to(w.device)
    w = w.index_select(0 if axis == "out" else 1, idx)
    if isinstance(module, nn.Linear):
        module.weight = _param(w, module.weight)
        module.out_features, module.in_features = w.shape
    else:  # Conv1D stores [in, out]
        module.weight = _param(w.t(), module.weight)
        module.nf, module.nx = w.shape
    if axis == "out" and module.bias is not None:
        module.bias = _param(module.bias.index_select(0, idx), module.bias)


def _cut_embedding(module: nn.Embedding, idx: torch.Tensor) -> None:
    module.weight = _param(module.weight.index_select(1, idx.to(module.weight.device)), module.weight)
    module.embedding_dim = len(idx)


def _cut_norm(module: nn.Module, idx: torch.Tensor) -> None:
    for name in ("weight", "bias"):
        p = getattr(module, name, None)
        if isinstance(p, nn.Parameter):
            setattr(module, name, _param(p.index_select(0, idx.to(p.device)), p))
    if hasattr(module, "normalized_shape"):
        module.normalized_shape = (len(idx),)


def cut(coupling: Coupling, keep_units: torch.Tensor) -> None:
    """Keep the indices of ``coupling`` whose unit is in ``keep_units`` (order preserved)."""
    idx = torch.nonzero(torch.isin(coupling.units, keep_units.cpu())).flatten()
    module = coupling.module
    if isinstance(module, nn.Embedding):
        _cut_embedding(module, idx)
    elif is_prunable(module):
        _cut_projection(module, coupling.axis, idx)
    else:
        _cut_norm(module, idx)


# ----------------------------------------------------------------------------- validation


def _check_indices(what: str, indices: Sequence[int], size: int, minimum: int = 1) -> list[int]:
    values = [int(i) for i in indices]
    if len(values) < minimum:
        raise ValueError(f"{what}: keeps {len(values)}, at least {minimum} must stay")
    if len(set(values)) != len(values) or any(not 0 <= v < size for v in values):
        raise ValueError(f"{what}: indices {values} must be distinct and in [0, {size})")
    return sorted(values)


def _check_layers(model: nn.Module, keep: Mapping[int, Any], what: str) -> None:
    n = len(decoder_layers(model))
    bad = [i for i in keep if not 0 <= int(i) < n]
    if bad:
        raise ValueError(f"{what}: layer indices {bad} are not in [0, {n})")


def check_heads(model: nn.Module, keep: Mapping[int, Sequence[int]]) -> dict[int, list[int]]:
    """Validate ``{layer: query heads to keep}``; return it sorted.

    Raises:
        ValueError: no head left, an index out of range, or kept KV groups keeping different numbers of
            query heads (then the GQA ratio ``heads / kv_heads`` cannot be one integer).
    """
    spec = arch_spec(model)
    _check_layers(model, keep, "heads")
    checked = {}
    for layer, heads in keep.items():
        shape = block_shape(decoder_layers(model)[int(layer)], spec)
        kept = _check_indices(f"layer {layer} query heads", heads, shape.num_heads)
        per_group = shape.num_heads // shape.num_kv_heads
        counts: dict[int, int] = {}
        for h in kept:
            counts[h // per_group] = counts.get(h // per_group, 0) + 1
        if len(set(counts.values())) > 1:
            raise ValueError(
                f"layer {layer}: kept query heads {kept} leave KV groups {counts} (group: kept heads) with "
                f"different numbers of query heads; every kept group of {per_group} must keep the same count "
                "so that heads / kv_heads stays an integer"
            )
        checked[int(layer)] = kept
    return checked


# ----------------------------------------------------------------------------- cuts


def prune_heads(model: nn.Module, keep: Mapping[int, Sequence[int]]) -> dict[str, Any]:
    """Keep, per layer, the given query heads; KV heads stay where a kept query head reads them.

    Args:
        keep: ``{layer index: query head indices to keep}``; layers not listed are unchanged. Each kept
            KV group must keep the same number of query heads (see :func:`check_heads`).

    Returns:
        :func:`sync_config`'s summary.
    """
    keep = check_heads(model, keep)
    for layer, heads in keep.items():
        couplings, shape = attention_couplings(model, layer)
        per_group = shape.num_heads // shape.num_kv_heads
        groups = sorted({h // per_group for h in heads})
        units = torch.tensor(heads + [shape.num_heads + g for g in groups])
        for coupling in couplings:
            cut(coupling, units)
    return sync_config(model)


def check_ffn(model: nn.Module, keep: Mapping[int, Sequence[int]]) -> dict[int, list[int]]:
    """Validate ``{layer: FFN neurons to keep}`` (at least one, in range); return it sorted."""
    _check_layers(model, keep, "ffn")
    spec, layers = arch_spec(model), decoder_layers(model)
    return {
        int(layer): _check_indices(
            f"layer {layer} FFN neurons", idx, _out(layers[int(layer)].get_submodule(spec.up))
        )
        for layer, idx in keep.items()
    }


def prune_ffn(model: nn.Module, keep: Mapping[int, Sequence[int]]) -> dict[str, Any]:
    """Keep, per layer, the given FFN neurons (``{layer: neuron indices}``); returns :func:`sync_config`'s summary."""
    checked = check_ffn(model, keep)
    for layer, idx in checked.items():
        for coupling in ffn_couplings(model, layer):
            cut(coupling, torch.tensor(idx))
    return sync_config(model)


def check_hidden(model: nn.Module, keep: Sequence[int]) -> list[int]:
    """Validate the hidden channels to keep and that the table describes every hidden-sized tensor."""
    kept = _check_indices("hidden channels", keep, hidden_width(model))
    hidden_couplings(model)
    return kept


def prune_hidden(model: nn.Module, keep: Sequence[int]) -> dict[str, Any]:
    """Keep the given channels of the residual width everywhere (Minitron's embedding-channel pruning).

    Embeddings, every norm, every projection on the residual stream and the heads on top are cut; a
    tied LM head stays tied. Returns :func:`sync_config`'s summary.
    """
    kept = check_hidden(model, keep)
    couplings = hidden_couplings(model)
    tied = _tied_output(model)
    for coupling in couplings:
        cut(coupling, torch.tensor(kept))
    if tied is not None:
        tied.weight = model.get_input_embeddings().weight
        if hasattr(tied, "in_features"):
            tied.in_features = len(kept)
    _reset_embed_scale(model, len(kept))
    return sync_config(model)


def _reset_embed_scale(model: nn.Module, width: int) -> None:
    """Gemma scales token embeddings by ``sqrt(hidden)``; a reload computes it from the new width."""
    emb = model.get_input_embeddings()
    for attr in arch_spec(model).embed_scale:
        value = getattr(emb, attr, None)
        if isinstance(value, torch.Tensor):
            value.fill_(width**0.5)
        elif isinstance(value, float):
            setattr(emb, attr, width**0.5)


def check_drop_layers(model: nn.Module, keep: Sequence[int]) -> list[int]:
    """Validate the blocks to keep (at least one; GPT-2's per-index attention scaling cannot move)."""
    kept = _check_indices("layers", keep, len(decoder_layers(model)))
    if getattr(model.config, "scale_attn_by_inverse_layer_idx", False) and kept != list(range(len(kept))):
        raise ValueError(
            "scale_attn_by_inverse_layer_idx=True ties each block's attention scale to its index; "
            "dropping blocks would change it on reload"
        )
    return kept


def drop_layers(model: nn.Module, keep: Sequence[int]) -> dict[str, Any]:
    """Keep only the blocks ``keep`` (original indices), renumber ``layer_idx``, rewrite the config.

    Config lists with one entry per block (``layer_types``, ``*_per_layer``) are cut the same way.
    """
    kept = check_drop_layers(model, keep)
    spec, layers = arch_spec(model), decoder_layers(model)
    n_before = len(layers)
    parent_path, _, attr = spec.layers.rpartition(".")
    parent = base_model(model).get_submodule(parent_path) if parent_path else base_model(model)
    setattr(parent, attr, nn.ModuleList([layers[i] for i in kept]))
    for new_index, block in enumerate(decoder_layers(model)):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = model.config
    for key, value in list(vars(config).items()):
        per_layer = key == "layer_types" or key.endswith("_per_layer")
        if per_layer and isinstance(value, list) and len(value) == n_before:
            setattr(config, key, [value[i] for i in kept])
    return sync_config(model)


def resize_layers(model: nn.Module, shapes: Sequence[Mapping[str, int]]) -> dict[str, Any]:
    """Shrink a freshly built model's blocks to per-layer ``shapes`` (keeping the first units).

    For loading a per-layer checkpoint: build the model from a config holding the largest dims,
    call this with the recorded :func:`layer_shapes`, then load the state dict.
    """
    layers = decoder_layers(model)
    if len(shapes) != len(layers):
        raise ValueError(f"shapes has {len(shapes)} entries but the model has {len(layers)} blocks")
    spec = arch_spec(model)
    heads, ffn = {}, {}
    for i, (block, want) in enumerate(zip(layers, shapes, strict=True)):
        have = block_shape(block, spec)
        kv, per_group = int(want["num_kv_heads"]), int(want["num_heads"]) // int(want["num_kv_heads"])
        if kv * per_group != int(want["num_heads"]) or kv > have.num_kv_heads:
            raise ValueError(f"layer {i}: shape {dict(want)} does not fit the block's {have.to_dict()}")
        old_per_group = have.num_heads // have.num_kv_heads
        heads[i] = [g * old_per_group + r for g in range(kv) for r in range(per_group)]
        ffn[i] = list(range(int(want["ffn"])))
    prune_heads(model, heads)
    return prune_ffn(model, ffn)


@dataclass
class StructuredPlan:
    """What to keep, in the input model's numbering.

    Attributes:
        heads: ``{layer: query heads kept}`` (KV heads follow, see :func:`prune_heads`).
        ffn: ``{layer: FFN neurons kept}``.
        hidden: residual channels kept (``None``: all).
        layers: blocks kept (``None``: all); applied last.
    """

    heads: dict[int, list[int]] = field(default_factory=dict)
    ffn: dict[int, list[int]] = field(default_factory=dict)
    hidden: list[int] | None = None
    layers: list[int] | None = None


def apply_plan(model: nn.Module, plan: StructuredPlan) -> dict[str, Any]:
    """Validate the whole plan, then cut heads, FFN neurons, hidden channels and blocks, in that order.

    Nothing changes when any part of the plan is invalid. Returns :func:`sync_config`'s summary.
    """
    check_heads(model, plan.heads)
    check_ffn(model, plan.ffn)
    if plan.hidden is not None:
        check_hidden(model, plan.hidden)
    if plan.layers is not None:
        check_drop_layers(model, plan.layers)
    summary = sync_config(model)
    if plan.heads:
        summary = prune_heads(model, plan.heads)
    if plan.ffn:
        summary = prune_ffn(model, plan.ffn)
    if plan.hidden is not None:
        summary = prune_hidden(model, plan.hidden)
    if plan.layers is not None:
        summary = drop_layers(model, plan.layers)
    return summary


# ----------------------------------------------------------------------------- config


def sync_attention_attrs(model: nn.Module) -> None:
    """Set the table's attention attributes (heads, groups, inner width ...) from the weights."""
    spec = arch_spec(model)
    width = hidden_width(model)
    for block in decoder_layers(model):
        shape = block_shape(block, spec)
        values = {
            "heads": shape.num_heads,
            "kv_heads": shape.num_kv_heads,
            "groups": shape.num_heads // shape.num_kv_heads,
            "inner": shape.num_heads * shape.head_dim,
            "hidden": width,
        }
        attention = attention_module(block, spec)
        for attr, quantity in spec.attention_attrs:
            setattr(attention, attr, values[quantity])


def sync_config(model: nn.Module) -> dict[str, Any]:
    """Rewrite the config (and attention attributes) from the weights' shapes.

    Uniform blocks get exact fields (heads, KV heads, FFN, hidden, layers and an explicit
    ``head_dim`` where the family has the field). Per-layer shapes get an envelope every block can be
    carved from with :func:`resize_layers` (most KV heads x most query heads per KV head, widest FFN);
    the exact shapes are in the returned ``layer_shapes``.

    Returns:
        ``{"uniform", "plain_config", "config_problem", "layer_shapes", "hidden_size", "num_layers"}``;
        ``plain_config`` is True when plain ``from_pretrained`` of the saved config rebuilds these
        shapes; ``config_problem`` is the config class's own validation error, if any (e.g. 5.x Llama
        wants ``hidden_size % num_attention_heads == 0``).
    """
    spec, config = arch_spec(model), model.config
    sync_attention_attrs(model)
    shapes = [block_shape(block, spec) for block in decoder_layers(model)]
    width = hidden_width(model)
    uniform = all(s == shapes[0] for s in shapes)
    kv = max(s.num_kv_heads for s in shapes)
    per_group = max(s.num_heads // s.num_kv_heads for s in shapes)
    top = LayerShape(kv * per_group, kv, shapes[0].head_dim, max(s.ffn for s in shapes))
    setattr(config, spec.n_layers, len(shapes))
    setattr(config, spec.hidden, width)
    setattr(config, spec.n_heads, top.num_heads)
    setattr(config, spec.ffn, top.ffn)
    if spec.n_kv_heads:
        setattr(config, spec.n_kv_heads, top.num_kv_heads)
    if spec.head_dim:
        setattr(config, spec.head_dim, top.head_dim)
    if spec.embed_dim_field and _optional(base_model(model), (spec.embed_proj or (None,))[0]) is None:
        setattr(config, spec.embed_dim_field, width)
    derivable = spec.head_dim is not None or top.num_heads * top.head_dim == width
    problem = _config_problem(config)
    return {
        "uniform": uniform,
        "plain_config": uniform and derivable and problem is None,
        "config_problem": problem,
        "layer_shapes": [s.to_dict() for s in shapes],
        "hidden_size": width,
        "num_layers": len(shapes),
    }


def _config_problem(config: Any) -> str | None:
    """The config class's validation error (transformers 5.x strict configs), or None."""
    validate = getattr(config, "validate", None)
    if not callable(validate):
        return None
    try:
        validate()
    except Exception as error:  # noqa: BLE001 - any validation failure is reported, not raised
        return str(error).strip().splitlines()[-1]
    return None


# ----------------------------------------------------------------------------- parameter counts


def block_param_count(block: nn.Module, spec: ArchSpec, shape: LayerShape, width: int) -> int:
    """Parameters the block would hold with ``shape`` and residual ``width`` (other tensors unchanged).

    Computed from the table's roles: readers ``[out, width]``, writers ``[width, in]``, norms ``[width]``.
    """
    d = shape.head_dim
    q_out, kv_out = shape.num_heads * d, shape.num_kv_heads * d
    sizes = {spec.o: (width, q_out), spec.up: (shape.ffn, width), spec.down: (width, shape.ffn)}
    if spec.gate:
        sizes[spec.gate] = (shape.ffn, width)
    if spec.qkv:
        sizes[spec.qkv] = (q_out + 2 * kv_out, width)
    else:
        sizes.update({spec.q: (q_out, width), spec.k: (kv_out, width), spec.v: (kv_out, width)})
    counted, total = set(), 0
    for path, (out_features, in_features) in sizes.items():
        module = block.get_submodule(path)
        counted.update(id(p) for p in module.parameters())
        total += out_features * in_features + (out_features if module.bias is not None else 0)
    for path in spec.norms:
        norm = _optional(block, path)
        if norm is not None:
            params = [p for p in norm.parameters(recurse=False)]
            counted.update(id(p) for p in params)
            total += width * len(params)
    total += sum(p.numel() for p in block.parameters() if id(p) not in counted)
    return total


def decoder_param_count(model: nn.Module) -> int:
    """Parameters inside the decoder (or encoder) blocks."""
    return sum(p.numel() for p in decoder_layers(model).parameters())
