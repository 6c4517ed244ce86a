"""A loopback stand-in for the Hugging Face Hub API that records every request it receives.

Serves 127.0.0.1 on a free port, answers the calls ``create_repo`` / ``create_branch`` /
``upload_folder`` make (files are always "regular" uploads, inlined in the commit), and stops by
itself after ``lifetime`` seconds or ``max_requests`` requests, whichever comes first.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    body: bytes

    def json(self):
        return json.loads(self.body or b"{}")

    def ndjson(self) -> list[dict]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


@dataclass
class FakeHub:
    """``with FakeHub() as hub: ... hub.url ... hub.requests``; ``fail_commit`` answers commits with 403."""

    fail_commit: bool = False
    lifetime: float = 60.0
    max_requests: int = 200
    requests: list[Request] = field(default_factory=list)

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                hub._handle(self, "GET")

            def do_POST(self):
                hub._handle(self, "POST")

            def do_PUT(self):
                hub._handle(self, "PUT")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._timer.cancel()
        if self._thread.is_alive():
            threading.Thread(target=self._server.shutdown, daemon=True).start()
            self._thread.join(timeout=5)
        self._server.server_close()

    def paths(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests]

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        request = Request(
            method,
            url.path,
            parse_qs(url.query),
            handler.headers.get("Authorization"),
            handler.rfile.read(length) if length else b"",
        )
        self.requests.append(request)
        if len(self.requests) >= self.max_requests:
            threading.Thread(target=self.stop, daemon=True).start()
        status, payload = self._route(request)
        body = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        if status >= 400:
            handler.send_header("X-Error-Message", payload.get("error", "error"))
        handler.end_headers()
        handler.wfile.write(body)

    def _route(self, r: Request) -> tuple[int, dict]:
        parts = r.path.strip("/").split("/")
        if r.path == "/api/repos/create":
            data = r.json()
            repo = (
                f"{data.get('organization') or 'user'}/{data['name']}"
                if data.get("organization")
                else data["name"]
            )
            return 200, {"url": f"{self.url}/{repo}", "name": repo, "id": "0" * 24}
        if r.path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        if len(parts) >= 5 and parts[0] == "api" and parts[1] == "models":
            repo, action = f"{parts[2]}/{parts[3]}", parts[4]
            if action == "preupload":
                files = r.json()["files"]
                return 200, {
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                    ]
                }
            if action == "branch":
                return 200, {}
            if action == "discussions" and r.method == "POST":
                return 200, {"num": 1, "url": f"{self.url}/{repo}/discussions/1"}
            if action == "discussions":
                return 200, self._discussion(repo)
            if action == "commit":
                if self.fail_commit:
                    return 403, {"error": "You don't have the rights to create a commit in this repo"}
                pr = "create_pr" in r.query
                return 200, {
                    "commitUrl": f"{self.url}/{repo}/commit/{'c' * 40}",
                    "commitOid": "c" * 40,
                    "pullRequestUrl": f"{self.url}/{repo}/discussions/1" if pr else None,
                }
        return 404, {"error": f"fake hub: no route for {r.method} {r.path}"}

    def _discussion(self, repo: str) -> dict:
        return {
            "title": "pr",
            "num": 1,
            "author": {"name": "me"},
            "createdAt": "2026-01-01T00:00:00.000Z",
            "status": "draft",
            "repo": {"name": repo, "type": "model"},
            "isPullRequest": True,
            "events": [],
            "changes": {"base": "refs/heads/main"},
            "filesWithConflicts": [],
        }
