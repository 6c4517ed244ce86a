"""push_to_hub with the real huggingface_hub client against a loopback server that records the calls."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import huggingface_hub
import pytest
from fake_hub import FakeHub

from hf_compress.hub import CardContext, create_model_card
from hf_compress.push import MissingTokenError, PushError, push_to_hub
from hf_compress.release_cli import push_main

TOKEN = "hf_fake_token_for_tests"


@pytest.fixture
def release(tmp_path) -> Path:
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"\0" * 1000)
    (folder / "compression_report.json").write_text(json.dumps({"recipe": "smollm2-sparsegpt-2of4"}))
    (folder / ".hidden-tmp").write_text("never uploaded")
    ctx = CardContext(
        model_name="m", base_model="HuggingFaceTB/SmolLM2-135M-Instruct", summary="A test model."
    )
    (folder / "README.md").write_text(str(create_model_card(ctx)))
    return folder


@pytest.fixture
def hub_endpoint(monkeypatch):
    """Point huggingface_hub at a fake Hub, as HF_ENDPOINT would (read by the client at import time)."""

    def use(hub: FakeHub) -> str:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
        return hub.url

    return use


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_push_creates_the_repo_and_commits_the_folder(release, hub_endpoint):
    with FakeHub() as hub:
        hub_endpoint(hub)
        result = push_to_hub(release, "me/smol-2of4", token=TOKEN, private=True, endpoint=hub.url)
    create = next(r for r in hub.requests if r.path == "/api/repos/create").json()
    assert create["name"] == "smol-2of4" and create["organization"] == "me"
    assert create.get("visibility") == "private" or create.get("private") is True
    assert all(
        r.authorization == f"Bearer {TOKEN}"
        for r in hub.requests
        if r.path.startswith(("/api/repos", "/api/models"))
    )
    commit = next(r for r in hub.requests if r.path.endswith("/commit/main"))
    header, *files = commit.ndjson()
    assert (
        header["value"]["summary"]
        == "Upload smollm2-sparsegpt-2of4 (hf-compress recipe smollm2-sparsegpt-2of4)"
    )
    sent = sorted(f["value"]["path"] for f in files)
    assert sent == ["README.md", "compression_report.json", "config.json", "model.safetensors"]
    assert result.commit_url.endswith("c" * 40) and result.pr_url is None


def test_push_as_a_pull_request(release, hub_endpoint):
    with FakeHub() as hub:
        hub_endpoint(hub)
        result = push_to_hub(
            release, "me/smol", token=TOKEN, create_pr=True, endpoint=hub.url, commit_message="v2"
        )
    commit = next(r for r in hub.requests if "/commit/" in r.path)
    opened = [r for r in hub.requests if r.path.endswith("/discussions") and r.method == "POST"]
    if opened:  # huggingface_hub >= 1.x opens the PR first, then commits to refs/pr/N
        assert opened[0].json()["pullRequest"] is True and commit.path.endswith("/commit/refs%2Fpr%2F1")
    else:  # older clients commit with create_pr=1
        assert commit.path.endswith("/commit/main") and commit.query.get("create_pr") == ["1"]
    assert commit.ndjson()[0]["value"]["summary"] == "v2"
    assert result.pr_url.endswith("/discussions/1")


def test_pull_request_to_another_branch_is_refused_before_any_call(release):
    with pytest.raises(ValueError, match="default branch"):
        push_to_hub(
            release, "me/smol", token=TOKEN, revision="v2", create_pr=True, endpoint="http://127.0.0.1:9"
        )


def test_push_to_a_branch_creates_it(release, hub_endpoint):
    with FakeHub() as hub:
        hub_endpoint(hub)
        push_to_hub(release, "me/smol", token=TOKEN, revision="exp", endpoint=hub.url)
    assert "POST /api/models/me/smol/branch/exp" in hub.paths()


def test_missing_token_says_how_to_log_in(release, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with FakeHub() as hub, pytest.raises(MissingTokenError, match="hf auth login.*HF_TOKEN"):
        push_to_hub(release, "me/smol", endpoint=hub.url)
    assert hub.requests == []


def test_failed_push_deletes_nothing_local(release):
    before = snapshot(release)
    with FakeHub(fail_commit=True) as hub, pytest.raises(PushError, match="local files untouched"):
        push_to_hub(release, "me/smol", token=TOKEN, endpoint=hub.url)
    assert any("/commit/" in p for p in hub.paths())
    assert snapshot(release) == before


def test_dry_run_validates_without_network(release, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with FakeHub() as hub:
        result = push_to_hub(release, "me/smol", dry_run=True, endpoint=hub.url)
    assert hub.requests == [] and result.dry_run and not result.token_found
    assert ".hidden-tmp" not in result.files and result.files["model.safetensors"] == 1000


def test_dry_run_rejects_a_bad_card(release):
    text = (
        (release / "README.md")
        .read_text()
        .replace("base_model_relation: finetune", "base_model_relation: pruned")
    )
    (release / "README.md").write_text(text)
    with pytest.raises(ValueError, match="base_model_relation='pruned'"):
        push_to_hub(release, "me/smol", dry_run=True)


def test_dry_run_rejects_a_folder_without_weights_or_card(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no model card.*no weights"):
        push_to_hub(tmp_path, "me/smol", dry_run=True)


def test_bad_repo_id_is_refused(release):
    with pytest.raises(ValueError):
        push_to_hub(release, "me/too/many", dry_run=True)


def test_cli_push_dry_run_and_missing_token(release, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert push_main([str(release), "me/smol", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: would upload 4 files" in out and "NOT found" in out
    assert push_main([str(release), "me/smol", "--endpoint", "http://127.0.0.1:9"]) == 2
    assert "hf auth login" in capsys.readouterr().err


def test_cli_push_uploads(release, capsys, hub_endpoint):
    with FakeHub() as hub:
        hub_endpoint(hub)
        assert push_main([str(release), "me/smol", "--token", TOKEN, "--endpoint", hub.url]) == 0
    assert "uploaded 4 files" in capsys.readouterr().out
