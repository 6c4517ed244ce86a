"""Checkpoints that load as the same model under transformers 4.57 and 5.x.

Every folder the product writes goes through :func:`save_pretrained_portable`. Two traps make a
plain ``save_pretrained`` unsafe across the 4.57 / 5.x boundary, both silent (no error, other
numbers):

* RoPE: 5.x keeps the base frequency in ``config.json["rope_parameters"]``; 4.57 reads only the
  top-level ``rope_theta`` / ``rope_scaling`` and otherwise falls back to 10000.
  :func:`make_config_portable` writes both forms.
* Tokenizer: a 5.x folder (``tokenizer_class: TokenizersBackend``) does not load in 4.57, and a
  4.57 folder with a model-specific class (``LlamaTokenizerFast`` built from GGUF) is rebuilt by
  5.x from vocab and merges with another pre-tokenizer. :func:`save_tokenizer_portable` writes the
  exact ``tokenizers`` pipeline (``tokenizer.json``: normalizer, pre-tokenizer, BPE/WordPiece
  model, post-processor that decides BOS/EOS, decoder) plus a ``tokenizer_config.json`` naming the
  generic ``PreTrainedTokenizerFast``, which both versions load verbatim from ``tokenizer.json``.

Folders are written with :func:`atomic_dir`: into a temporary sibling, renamed into place only
when complete, so a failed run never leaves a half-written folder where the output belongs.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
_SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
_PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    " over  the lazy dog\n\nNew paragraph, 12345 and 3.14 — café, naïve, 東京.",
)


# ----------------------------------------------------------------------------- folders


def check_output_path(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing output ``path`` unless ``overwrite`` (call before heavy work).

    Raises:
        FileExistsError: naming the path and the ``overwrite`` option.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"output folder {str(path)!r} already exists; choose another path or pass overwrite=True "
            "(CLI: --overwrite) to replace it"
        )
    return path


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Write a folder atomically: yield a temporary sibling, rename it to ``path`` on success.

    On an exception the temporary folder is removed and an existing ``path`` is left untouched.
    With ``overwrite=True`` an existing ``path`` is replaced only after the new folder is complete.

    Example::

        with atomic_dir("out/model", overwrite=True) as tmp:
            model.save_pretrained(tmp)
    """
    path = check_output_path(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        _publish(tmp, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _usual_permissions(folder: Path) -> None:
    """mkdtemp makes 0700 and some writers make 0600 files: give everything the umask's usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    for item in [folder, *folder.rglob("*")]:
        if not item.is_symlink():
            item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` folder to ``path`` (moving an old one aside first)."""
    _usual_permissions(tmp)
    old = None
    if path.exists() or path.is_symlink():
        check_output_path(path, overwrite)  # someone else may have written it meanwhile
        old = path.with_name(f".{path.name}.old-{os.getpid()}-{tmp.name[-8:]}")
        os.rename(path, old)
    try:
        os.rename(tmp, path)
    except OSError:
        if old is not None:
            os.rename(old, path)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


# ----------------------------------------------------------------------------- config


def make_config_portable(config_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of a ``config.json`` dict that 4.57 and 5.x read with the same RoPE.

    Keeps ``rope_parameters`` (5.x) and adds the legacy top-level keys 4.57 reads: ``rope_theta``,
    ``rope_scaling`` (the non-default RoPE type, without ``rope_theta``) and
    ``partial_rotary_factor``. A legacy-only dict gets ``rope_parameters`` added. Per-layer-type
    parameters (``{"full_attention": {...}, "sliding_attention": {...}}``) map to ``rope_theta`` /
    ``rope_scaling`` from ``full_attention`` and ``rope_local_base_freq`` from
    ``sliding_attention`` (the Gemma 3 names in 4.57). Nested sub-configs (``text_config`` ...)
    are handled recursively.
    """
    out = copy.deepcopy(dict(config_dict))
    for key, value in out.items():
        if isinstance(value, dict) and ("model_type" in value or "rope_parameters" in value):
            out[key] = make_config_portable(value)
    params = out.get("rope_parameters")
    if isinstance(params, dict) and params:
        _add_legacy_rope(out, params)
    elif "rope_theta" in out:
        out["rope_parameters"] = _rope_parameters_from_legacy(out)
    return out


def _add_legacy_rope(out: dict[str, Any], params: dict[str, Any]) -> None:
    if all(isinstance(v, dict) for v in params.values()):  # nested by layer type
        main = params.get("full_attention") or next(iter(params.values()))
        local = params.get("sliding_attention")
        if local and "rope_theta" in local:
            out.setdefault("rope_local_base_freq", local["rope_theta"])
    else:
        main = params
    if "rope_theta" in main:
        out["rope_theta"] = main["rope_theta"]
    if "partial_rotary_factor" in main:
        out["partial_rotary_factor"] = main["partial_rotary_factor"]
    rope_type = main.get("rope_type", main.get("type", "default"))
    if rope_type != "default":
        skip = ("rope_theta", "partial_rotary_factor")
        out["rope_scaling"] = {k: v for k, v in main.items() if k not in skip}
    elif out.get("rope_scaling") is not None:
        out["rope_scaling"] = None  # a stale scaling dict would win over rope_parameters in 5.x


def _rope_parameters_from_legacy(out: dict[str, Any]) -> dict[str, Any]:
    params = dict(out.get("rope_scaling") or {})
    params.setdefault("rope_type", params.pop("type", "default"))
    params["rope_theta"] = out["rope_theta"]
    if "partial_rotary_factor" in out:
        params["partial_rotary_factor"] = out["partial_rotary_factor"]
    return params


def rewrite_config_portable(folder: str | Path) -> None:
    """Rewrite ``folder/config.json`` in place with :func:`make_config_portable`."""
    file = Path(folder) / "config.json"
    config = json.loads(file.read_text(encoding="utf-8"))
    file.write_text(
        json.dumps(make_config_portable(config), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


# ----------------------------------------------------------------------------- tokenizer


def portable_tokenizer_files(tokenizer: Any) -> dict[str, str]:
    """The ``tokenizer.json`` and ``tokenizer_config.json`` texts of a fast tokenizer.

    ``tokenizer.json`` is the exact backend pipeline, so BOS/EOS insertion is whatever the
    tokenizer does now (its post-processor), identically in both versions. The config names the
    generic class and carries what lives outside the pipeline: special-token names, chat template,
    ``model_input_names``, sides, ``model_max_length``.

    Raises:
        TypeError: if ``tokenizer`` has no ``backend_tokenizer`` (a slow tokenizer).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(
            f"tokenizer of type {type(tokenizer).__name__} has no `backend_tokenizer` (a slow tokenizer); "
            "load it with use_fast=True / the tokenizers backend to write a portable checkpoint"
        )
    pipeline = json.loads(backend.to_str())
    pipeline["truncation"] = None  # call-time state, not part of the tokenizer
    pipeline["padding"] = None
    config: dict[str, Any] = {"tokenizer_class": PORTABLE_TOKENIZER_CLASS}
    for name in _SPECIAL_TOKEN_NAMES:
        value = getattr(tokenizer, name, None)
        if value is not None:
            config[name] = str(value)
    extra = _extra_special_tokens(tokenizer)
    if extra:
        config["additional_special_tokens"] = extra
    # 5.x ignores clean-up for BPE models while 4.57 applies it: keep decode identical.
    bpe = pipeline.get("model", {}).get("type") == "BPE"
    config["clean_up_tokenization_spaces"] = (
        bool(getattr(tokenizer, "clean_up_tokenization_spaces", False)) and not bpe
    )
    config["model_input_names"] = list(tokenizer.model_input_names)
    config["model_max_length"] = int(tokenizer.model_max_length)
    config["padding_side"] = tokenizer.padding_side
    config["truncation_side"] = tokenizer.truncation_side
    template = getattr(tokenizer, "chat_template", None)
    if template:
        config["chat_template"] = template
    return {
        "tokenizer.json": json.dumps(pipeline, ensure_ascii=False, indent=2) + "\n",
        "tokenizer_config.json": json.dumps(config, ensure_ascii=False, indent=2) + "\n",
    }


def _extra_special_tokens(tokenizer: Any) -> list[str]:
    for attr in ("extra_special_tokens", "additional_special_tokens"):  # 5.x, then 4.57
        value = getattr(tokenizer, attr, None)
        if isinstance(value, (list, tuple)):
            return [str(t) for t in value]
    return []


def save_tokenizer_portable(tokenizer: Any, folder: str | Path, verify: bool = True) -> list[str]:
    """Write :func:`portable_tokenizer_files` into an existing ``folder``; return the file names.

    With ``verify``, reload the folder in the running transformers and check that the probe texts
    encode to the same ids and decode to the same text as ``tokenizer`` does.
    """
    folder = Path(folder)
    files = portable_tokenizer_files(tokenizer)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    if verify:
        verify_tokenizer_roundtrip(tokenizer, folder)
    return sorted(files)


def verify_tokenizer_roundtrip(
    tokenizer: Any, folder: str | Path, texts: tuple[str, ...] = _PROBE_TEXTS
) -> None:
    """Raise ``RuntimeError`` if the tokenizer saved in ``folder`` encodes ``texts`` differently."""
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(str(folder))
    for text in texts:
        want, got = tokenizer(text)["input_ids"], reloaded(text)["input_ids"]
        if want != got:
            raise RuntimeError(
                f"tokenizer written to {folder} encodes {text!r} as {got[:12]}... instead of {want[:12]}...; "
                f"reloaded as {type(reloaded).__name__}"
            )
        if tokenizer.decode(want) != reloaded.decode(got):
            raise RuntimeError(f"tokenizer written to {folder} decodes {text!r} differently after reload")


# ----------------------------------------------------------------------------- checkpoint


def save_pretrained_portable(
    model: Any,
    tokenizer: Any | None,
    path: str | Path,
    *,
    overwrite: bool = False,
    safe_serialization: bool = True,
    extra_files: Mapping[str, bytes | str] | None = None,
    verify_tokenizer: bool = True,
) -> Path:
    """Save ``model`` (+ ``tokenizer``) so the folder loads identically in transformers 4.57 and 5.x.

    Writes to a temporary sibling folder and renames it to ``path`` when complete (see
    :func:`atomic_dir`); ``config.json`` is made portable (:func:`make_config_portable`) and the
    tokenizer is written with :func:`save_tokenizer_portable`. ``extra_files`` maps relative file
    names (e.g. ``"compression_report.json"``, ``"README.md"``) to their contents.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False (checked before any writing).
        ValueError: an ``extra_files`` name leaves the folder, or ``safe_serialization=False`` on
            a transformers that only writes safetensors.
    """
    path = check_output_path(path, overwrite)
    save_kwargs = _save_kwargs(model, safe_serialization)
    extra = {_checked_name(name): data for name, data in (extra_files or {}).items()}
    with atomic_dir(path, overwrite=overwrite) as tmp:
        model.save_pretrained(str(tmp), **save_kwargs)
        rewrite_config_portable(tmp)
        if tokenizer is not None:
            save_tokenizer_portable(tokenizer, tmp, verify=verify_tokenizer)
        for name, data in extra.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, str):
                target.write_text(data, encoding="utf-8")
            else:
                target.write_bytes(data)
    logger.info("saved portable checkpoint to %s", path)
    return path


def _save_kwargs(model: Any, safe_serialization: bool) -> dict[str, Any]:
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        return {"safe_serialization": safe_serialization}
    if not safe_serialization:
        raise ValueError(
            "safe_serialization=False is not supported by this transformers version (it writes safetensors only); "
            "use safe_serialization=True"
        )
    return {}


def _checked_name(name: str) -> str:
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts:
        raise ValueError(f"extra_files name {name!r} must be a relative path inside the output folder")
    return name
