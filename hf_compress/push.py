"""Push a Hub-ready folder (PyTorch release or ONNX export) with ``huggingface_hub``.

``create_repo(exist_ok=True)`` then ``upload_folder`` in one commit whose message names the recipe.
The token comes from ``token=``, else ``HF_TOKEN`` / ``hf auth login`` (``huggingface_hub.get_token``).
A dry run checks the folder and its card and lists what would be uploaded, without a network call.
Pushing only reads the folder: a failed push leaves every local file as it was.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .hub import validate_card

logger = logging.getLogger(__name__)

IGNORE_PATTERNS = [".*", "**/.*", "*.tmp-*", "**/__pycache__/**", "__pycache__/*"]
_WEIGHTS = ("*.safetensors", "*.onnx", "*.bin", "*/*.onnx")


class PushError(RuntimeError):
    """The upload failed; nothing local was changed."""


class MissingTokenError(PushError):
    """No Hugging Face token: the message says how to log in."""


@dataclass
class PushResult:
    """What was (or, for a dry run, would be) uploaded, and where."""

    repo_id: str
    folder: Path
    files: dict[str, int]
    commit_message: str
    revision: str | None = None
    create_pr: bool = False
    private: bool = False
    dry_run: bool = False
    token_found: bool = False
    repo_url: str | None = None
    commit_url: str | None = None
    pr_url: str | None = None
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        size = sum(self.files.values()) / 1e6
        head = "dry run: would upload" if self.dry_run else "uploaded"
        target = (
            f"{self.repo_id}"
            + (f"@{self.revision}" if self.revision else "")
            + (" as a PR" if self.create_pr else "")
        )
        tail = f" -> {self.pr_url or self.commit_url}" if not self.dry_run else ""
        return f"{head} {len(self.files)} files ({size:.1f} MB) from {self.folder} to {target}{tail}"


def check_folder(folder: str | Path) -> list[str]:
    """Problems that make ``folder`` unfit to push (empty list when it is fine)."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{str(folder)!r} is not a folder"]
    problems = validate_card(folder / "README.md")
    if not (folder / "config.json").is_file():
        problems.append("no config.json")
    if not any(any(folder.glob(pattern)) for pattern in _WEIGHTS):
        problems.append("no weights (*.safetensors) or ONNX graph (*.onnx)")
    return problems


def upload_files(folder: Path) -> dict[str, int]:
    """``{path in repo: bytes}`` of what ``upload_folder`` will send (ignore patterns applied)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if not any(fnmatch.fnmatch(rel, pattern) for pattern in IGNORE_PATTERNS):
            files[rel] = path.stat().st_size
    return files


def default_commit_message(folder: Path) -> str:
    """``Upload <recipe> (hf-compress run <recipe>.yaml)`` from the folder's report, else a plain message."""
    for name in ("compression_report.json", "export_report.json"):
        report_file = folder / name
        if report_file.is_file():
            report = json.loads(report_file.read_text(encoding="utf-8"))
            recipe = report.get("recipe") or (report.get("source_report") or {}).get("recipe")
            kind = "ONNX export of " if name == "export_report.json" else ""
            if recipe:
                return f"Upload {kind}{recipe} (hf-compress recipe {recipe})"
    return f"Upload {folder.name} with hf-compress"


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    dry_run: bool = False,
    endpoint: str | None = None,
) -> PushResult:
    """Upload ``folder`` to the model repo ``repo_id`` (created if missing) in one commit.

    Args:
        revision: branch to commit to (created from the default branch if missing).
        create_pr: open a pull request against the default branch instead of committing.
        dry_run: validate and list the files; no network, no token needed.
        endpoint: Hub URL (default ``HF_ENDPOINT`` or huggingface.co).

    Raises:
        ValueError: a bad ``repo_id`` or a folder/card that fails the checks (all problems listed).
        MissingTokenError: no token; says how to log in.
        PushError: the Hub refused or failed (the local folder is untouched).
    """
    from huggingface_hub import get_token
    from huggingface_hub.utils import validate_repo_id

    folder = Path(folder)
    validate_repo_id(repo_id)
    if create_pr and revision not in (None, "main"):
        raise ValueError(
            f"create_pr=True with revision={revision!r}: the Hub opens pull requests against the default branch; "
            "pass either a revision (commit to that branch) or create_pr"
        )
    problems = check_folder(folder)
    if problems:
        raise ValueError(f"cannot push {folder}: " + "; ".join(problems))
    token = token or get_token()
    result = PushResult(
        repo_id=repo_id,
        folder=folder,
        files=upload_files(folder),
        commit_message=commit_message or default_commit_message(folder),
        revision=revision,
        create_pr=create_pr,
        private=private,
        dry_run=dry_run,
        token_found=token is not None,
    )
    if dry_run:
        logger.info("%s", result.summary())
        return result
    if token is None:
        raise MissingTokenError(
            "no Hugging Face token found: log in with `hf auth login` (or `huggingface-cli login`), or set the "
            "HF_TOKEN environment variable, or pass token=... (CLI: --token). A write token is needed: "
            "https://huggingface.co/settings/tokens"
        )
    _upload(result, token, endpoint)
    logger.info("%s", result.summary())
    return result


def _upload(result: PushResult, token: str, endpoint: str | None) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint, token=token)
    try:
        result.repo_url = str(api.create_repo(result.repo_id, private=result.private, exist_ok=True))
        if result.revision and not result.create_pr:
            api.create_branch(result.repo_id, branch=result.revision, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(result.folder),
            repo_id=result.repo_id,
            revision=result.revision,
            create_pr=result.create_pr,
            commit_message=result.commit_message,
            ignore_patterns=IGNORE_PATTERNS,
        )
    except HfHubHTTPError as err:
        raise PushError(
            f"push of {result.folder} to {result.repo_id} failed (local files untouched): {err}"
        ) from err
    result.commit_url = getattr(info, "commit_url", None)
    result.pr_url = getattr(info, "pr_url", None)


def as_dict(result: PushResult) -> dict[str, Any]:
    """JSON-ready view of a :class:`PushResult`."""
    from dataclasses import asdict

    return asdict(result) | {"folder": str(result.folder)}
