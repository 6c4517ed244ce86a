"""Prove that a checkpoint loads as the same model in another environment (e.g. transformers 4.57).

Under the environment that made the model (transformers 5.x), :func:`write_reference` stores a
small file next to the checkpoint: probe texts, their token ids, the argmax of every position's
logits and the logits at a fixed set of vocabulary ids (a few hundred columns, so the file stays
small). :func:`check_reference` loads the checkpoint in the running environment and compares:
token ids must be equal, argmax must agree, and the sampled logits must be within ``atol``.

It catches the silent cross-version traps listed in NOTES.md: a RoPE base read from a key the
other version ignores (all logits move), a tokenizer folder read differently (ids differ).
Imports only torch and safetensors at module level, so it runs in any environment.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

REFERENCE_FILE = "hf_compress_reference.safetensors"
PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    " = Valkyria Chronicles III = \n Senjō no Valkyria 3 : <unk> Chronicles ( Japanese : 戦場のヴァルキュリア3 ) ,",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
)
_COLUMNS = 256


class ReferenceMismatchError(RuntimeError):
    """The checkpoint does not reproduce the reference logits in this environment."""


@dataclass
class ReferenceCheck:
    """Outcome of :func:`check_reference`."""

    ids_equal: bool
    argmax_agreement: float
    max_abs_diff: float
    atol: float
    recorded_with: dict[str, str]
    checked_with: dict[str, str]

    @property
    def ok(self) -> bool:
        return self.ids_equal and self.argmax_agreement == 1.0 and self.max_abs_diff <= self.atol

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}


def write_reference(model: Any, tokenizer: Any, folder: str | Path, *, max_tokens: int = 48) -> Path:
    """Record the probe texts' ids and logits of ``model`` into ``folder/REFERENCE_FILE``."""
    from safetensors.torch import save_file

    rows = [tokenizer(text)["input_ids"][:max_tokens] for text in PROBE_TEXTS]
    vocab = (
        model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else None
    )
    columns = _columns(vocab or int(model.config.vocab_size))
    tensors: dict[str, torch.Tensor] = {"columns": columns}
    for i, row in enumerate(rows):
        logits = _logits(model, row)
        tensors[f"ids.{i}"] = torch.tensor(row, dtype=torch.int64)
        tensors[f"argmax.{i}"] = logits.argmax(-1)
        tensors[f"logits.{i}"] = logits[:, columns].contiguous()
    path = Path(folder) / REFERENCE_FILE
    save_file(tensors, str(path), metadata={"versions": json.dumps(_versions()), "n": str(len(rows))})
    return path


def check_reference(
    model: Any, tokenizer: Any, reference: str | Path, *, atol: float = 1e-3, raise_on_mismatch: bool = True
) -> ReferenceCheck:
    """Compare ``model`` / ``tokenizer`` in this environment with a file from :func:`write_reference`.

    Raises:
        ReferenceMismatchError: when ``raise_on_mismatch`` and the ids, argmax or logits differ.
    """
    from safetensors import safe_open

    path = Path(reference)
    path = path / REFERENCE_FILE if path.is_dir() else path
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        data = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    ids_equal, agree, worst, total = True, 0, 0.0, 0
    for i, text in enumerate(PROBE_TEXTS[: int(meta["n"])]):
        ref_ids = data[f"ids.{i}"].tolist()
        ids_equal &= tokenizer(text)["input_ids"][: len(ref_ids)] == ref_ids
        logits = _logits(model, ref_ids)
        agree += int((logits.argmax(-1) == data[f"argmax.{i}"]).sum())
        total += len(ref_ids)
        worst = max(worst, float((logits[:, data["columns"]] - data[f"logits.{i}"]).abs().max()))
    check = ReferenceCheck(ids_equal, agree / total, worst, atol, json.loads(meta["versions"]), _versions())
    logger.info("reference check against %s: %s", path, check.to_dict())
    if raise_on_mismatch and not check.ok:
        raise ReferenceMismatchError(
            f"the checkpoint does not load as the same model here (transformers "
            f"{check.checked_with.get('transformers')}) as where it was recorded (transformers "
            f"{check.recorded_with.get('transformers')}): token ids equal={check.ids_equal}, argmax agreement "
            f"{check.argmax_agreement:.1%}, max |logit diff| {check.max_abs_diff:.3g} (atol {atol}). "
            "Save it with hf_compress.portable.save_pretrained_portable (RoPE keys and tokenizer for both versions)."
        )
    return check


@torch.inference_mode()
def _logits(model: Any, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids])
    return model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].float()


def _columns(vocab: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randperm(vocab, generator=generator)[: min(_COLUMNS, vocab)].sort().values


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("transformers", "torch", "tokenizers"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out
