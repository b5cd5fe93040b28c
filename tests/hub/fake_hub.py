"""A local Hugging Face Hub endpoint for tests: the parts of the Hub API that downloads and
``upload_folder`` use, with fault injection.

Served on 127.0.0.1 (a free port) by a threading HTTP server; every wait inside a handler is
bounded (``stall_s``) and ``close()`` releases it, so the fixture always stops.

Download side: ``HEAD`` / ``GET /<org>/<name>/resolve/<rev>/<path>`` (``X-Repo-Commit``, ``ETag``,
for LFS files ``X-Linked-Etag`` = the sha256 and ``X-Linked-Size``, ``Range`` requests), and
``GET /api/models/<org>/<name>[/revision/<rev>]`` (``siblings``: the repo's listing).
Upload side: ``POST /api/repos/create``, ``POST /api/models/<repo>/preupload/<rev>`` (every file
"regular", i.e. sent inline), ``POST /api/models/<repo>/commit/<rev>`` (ndjson, base64 files),
``POST /api/models/<repo>/branch/<rev>``, ``POST /api/validate-yaml`` (a README's metadata: valid).

Faults (``hub.fault(repo, filename, kind)``), applied to that file only:
``"500"`` (every request answers 500), ``"stall"`` (the metadata request stalls), ``"stall_body"``
(the download sends its headers and half the body, then stalls), ``"drop"`` (the first download
sends half the body and closes the connection; later ones are correct), ``"truncated"`` (the
download sends fewer bytes than the metadata announced), ``"flipped"`` (the download's payload
has flipped bytes; the ETag stays the sha256 of the good file).
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple

import pytest
from huggingface_hub import constants

__all__ = ["FakeHub", "hub", "TIMEOUT_S"]

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


class FakeHub:
    def __init__(self, stall_s: float = 5.0):
        self.repos: Dict[str, Dict[str, bytes]] = {}
        self.faults: Dict[Tuple[str, str], str] = {}
        self.requests: List[Tuple[str, str]] = []
        self.created: List[dict] = []
        self.branches: List[Tuple[str, str]] = []
        self.commits: List[dict] = []
        self.stall_s = stall_s
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._dropped = set()
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
        self._thread.start()

    # --- set-up --------------------------------------------------------------------------------
    def add(self, repo: str, filename: str, data: bytes) -> None:
        self.repos.setdefault(repo, {})[filename] = data

    def fault(self, repo: str, filename: str, kind: str) -> None:
        if kind not in ("500", "stall", "stall_body", "drop", "truncated", "flipped"):
            raise ValueError(f"unknown fault {kind!r}")
        self.faults[(repo, filename)] = kind

    def commit_hash(self, repo: str) -> str:
        files = self.repos.get(repo, {})
        h = hashlib.sha1(repo.encode())
        for name in sorted(files):
            h.update(name.encode() + hashlib.sha256(files[name]).digest())
        return h.hexdigest()

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    server_hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # --- helpers -------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: Optional[dict] = None, content_type="application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, headers=None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, code: str, message: str) -> None:
        self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def _body(self) -> bytes:
        return self._payload

    # --- routes --------------------------------------------------------------------------------
    def do_HEAD(self):
        self._route()

    def do_GET(self):
        self._route()

    def do_POST(self):
        self._route()

    def _route(self):
        hub = self.server_hub
        path = self.path.split("?")[0]
        # read every request body, so a keep-alive connection's next request starts clean
        n = int(self.headers.get("Content-Length") or 0)
        self._payload = self.rfile.read(n) if n else b""
        with hub._lock:
            hub.requests.append((self.command, path))
        parts = [p for p in path.split("/") if p]
        try:
            if parts[:3] == ["api", "repos", "create"] and self.command == "POST":
                return self._create_repo()
            if parts[:2] == ["api", "validate-yaml"] and self.command == "POST":  # the model card's metadata
                return self._json(200, {"errors": [], "warnings": []})
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo = "/".join(parts[2:4])
                rest = parts[4:]
                if not rest or rest[0] == "revision":
                    return self._model_info(repo)
                if rest[0] == "preupload":
                    return self._preupload(repo)
                if rest[0] == "commit":
                    return self._commit(repo, "/".join(rest[1:]) or "main")
                if rest[0] == "branch":
                    hub.branches.append((repo, "/".join(rest[1:])))
                    return self._json(200, {})
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve("/".join(parts[:2]), "/".join(parts[4:]))
        except (BrokenPipeError, ConnectionResetError):
            return
        self._error(404, "NotFound", f"{self.command} {path} is not part of this fake Hub")

    def _model_info(self, repo: str):
        hub = self.server_hub
        if repo not in hub.repos:
            return self._error(404, "RepoNotFound", f"Repository {repo} not found")
        files = hub.repos[repo]
        self._json(200, {"id": repo, "modelId": repo, "sha": hub.commit_hash(repo), "private": False,
                         "siblings": [{"rfilename": n} for n in sorted(files)]})

    def _resolve(self, repo: str, filename: str):
        hub = self.server_hub
        if repo not in hub.repos:
            return self._error(404, "RepoNotFound", f"Repository {repo} not found")
        if filename not in hub.repos[repo]:
            return self._error(404, "EntryNotFound", f"{filename} does not exist in {repo}")
        data = hub.repos[repo][filename]
        fault = hub.faults.get((repo, filename))
        if fault == "500":
            return self._error(500, "InternalError", "internal server error (injected)")
        if fault == "stall" and self.command == "HEAD":
            hub._release.wait(hub.stall_s)
            return
        lfs = filename.endswith(LFS_SUFFIXES)
        sha = hashlib.sha256(data).hexdigest()
        git_sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        headers = {"X-Repo-Commit": hub.commit_hash(repo), "ETag": f'"{sha if lfs else git_sha1}"', "Accept-Ranges": "bytes"}
        if lfs:
            headers.update({"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
        if self.command == "HEAD":
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return
        start = 0
        if (rng := self.headers.get("Range", "")).startswith("bytes="):
            start = int(rng[6:].split("-")[0] or 0)
        payload = data
        if fault == "flipped":
            payload = bytearray(data)
            for i in range(len(payload) - 64, len(payload) - 32):  # inside the tensor payload, past the header
                payload[i] ^= 0xFF
            payload = bytes(payload)
        body = payload[start:]
        send_len = len(body)
        self.send_response(206 if start else 200)
        for k, v in headers.items():
            self.send_header(k, v)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if fault == "truncated":
            body = body[: len(body) // 2]
            send_len = len(body)
        self.send_header("Content-Length", str(send_len))
        self.end_headers()
        once = (repo, filename) not in hub._dropped
        if fault == "drop" and once:
            hub._dropped.add((repo, filename))
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if fault == "stall_body":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            hub._release.wait(hub.stall_s)
            self.close_connection = True
            return
        self.wfile.write(body)

    def _create_repo(self):
        hub = self.server_hub
        req = json.loads(self._body() or b"{}")
        repo = f"{req.get('organization') or 'user'}/{req['name']}"
        hub.created.append(req)
        if repo in hub.repos:
            return self._error(409, "RepoExists", "You already created this model repo")
        hub.repos[repo] = {}
        self._json(200, {"url": f"{hub.endpoint}/{repo}", "name": repo, "id": repo})

    def _preupload(self, repo: str):
        req = json.loads(self._body() or b"{}")
        self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                   for f in req.get("files", [])]})

    def _commit(self, repo: str, revision: str):
        hub = self.server_hub
        lines = [json.loads(line) for line in self._body().decode().splitlines() if line.strip()]
        files = {}
        for item in lines:
            if item.get("key") == "file":
                v = item["value"]
                files[v["path"]] = base64.b64decode(v["content"]) if v.get("encoding") == "base64" else v["content"].encode()
            elif item.get("key") in ("lfsFile", "deletedFile", "deletedFolder", "copiedFile"):
                return self._error(400, "BadRequest", f"this fake Hub takes only regular files, got {item['key']}")
        if repo not in hub.repos:
            return self._error(404, "RepoNotFound", f"Repository {repo} not found")
        hub.repos[repo].update(files)
        hub.commits.append(dict(repo=repo, revision=revision, files=sorted(files)))
        oid = hub.commit_hash(repo)
        self._json(200, {"success": True, "commitOid": oid, "commitUrl": f"{hub.endpoint}/{repo}/commit/{oid}"})


# A stalled response must fail the load in about this many seconds (the tests' bound is derived from it).
TIMEOUT_S = 1


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A FakeHub with huggingface_hub pointed at it, a fresh Hub cache and attnzoo cache, short
    timeouts; stopped after the test."""
    server = FakeHub(stall_s=4 * TIMEOUT_S + 2)
    # huggingface_hub reads HF_ENDPOINT and the timeouts into `constants` at import: patch the
    # constants themselves (as huggingface_hub's own tests do), not only the environment.
    monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", TIMEOUT_S)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", TIMEOUT_S)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # plain HTTP: the fake Hub has no Xet storage
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)  # for subprocesses (the CLI tests)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", str(TIMEOUT_S))
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", str(TIMEOUT_S))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("ATTNZOO_CACHE", str(tmp_path / "attnzoo-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_the_local_endpoint")
    try:
        yield server
    finally:
        server.close()
