"""A stand-in for the Hugging Face Hub, in memory, for tests that push and pull without a network.

It answers only the calls huggingface_hub makes for create_repo, upload_folder (regular, non-LFS files)
and snapshot_download. Point a process at it with HF_ENDPOINT=<server.url>. ``fail = True`` makes every
request answer 500, to test a push against a broken Hub.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

EMPTY_COMMIT = "0" * 40


def git_blob_sha(data: bytes) -> str:
    """The id git gives a file's content; the Hub reports it as the file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _error(status: int, code: str, message: str) -> JSONResponse:
    # huggingface_hub maps X-Error-Code to RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError.
    return JSONResponse({"error": message}, status_code=status, headers={"X-Error-Code": code})


class HubServer:
    def __init__(self, token: str | None = None, user: str = "tester"):
        self.token, self.user, self.fail = token, user, False
        self.repos: dict[str, list[tuple[str, dict[str, bytes]]]] = {}  # repo id -> commits, oldest first
        self.app = self._build_app()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ---- repository state ------------------------------------------------------------------
    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes] | None:
        commit = self._commit(repo_id, revision)
        return None if commit is None else commit[1]

    def _commit(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        if repo_id not in self.repos:
            return None
        commits = self.repos[repo_id] or [(EMPTY_COMMIT, {})]
        if revision == "main":
            return commits[-1]
        return next((c for c in commits if c[0] == revision), None)

    # ---- the HTTP API ------------------------------------------------------------------------
    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def check(request: Request, call_next):
            if self.fail:
                return JSONResponse({"error": "stand-in Hub is failing on purpose"}, status_code=500)
            writing = request.method == "POST" and request.url.path != "/api/validate-yaml"
            if writing and self.token and request.headers.get("authorization") != f"Bearer {self.token}":
                return JSONResponse({"error": "Invalid credentials in Authorization header"}, status_code=401)
            return await call_next(request)

        @app.post("/api/repos/create")
        async def create(request: Request):
            body = await request.json()
            repo_id = f"{body.get('organization') or self.user}/{body['name']}"
            url = f"{self.url}/{repo_id}"
            if repo_id in self.repos:
                return JSONResponse({"error": "You already created this model repo", "url": url}, status_code=409)
            self.repos[repo_id] = []
            return {"url": url, "name": repo_id}

        @app.post("/api/validate-yaml")
        async def validate_yaml():
            return {"errors": [], "warnings": []}

        @app.post("/api/models/{owner}/{name}/preupload/{revision}")
        async def preupload(owner: str, name: str, revision: str, request: Request):
            if f"{owner}/{name}" not in self.repos:
                return _error(404, "RepoNotFound", "Repository not found")
            files = (await request.json())["files"]
            return {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                              for f in files]}

        @app.post("/api/models/{owner}/{name}/commit/{revision}")
        async def commit(owner: str, name: str, revision: str, request: Request):
            repo_id = f"{owner}/{name}"
            parent = self._commit(repo_id, revision)
            if parent is None:
                return _error(404, "RepoNotFound", "Repository not found")
            files, summary = dict(parent[1]), ""
            for line in (await request.body()).splitlines():
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "header":
                    summary = value.get("summary", "")
                elif item["key"] == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "deletedFile":
                    files.pop(value["path"], None)
                elif item["key"] == "deletedFolder":
                    files = {p: d for p, d in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
                else:
                    return JSONResponse({"error": f"unsupported commit operation {item['key']}"}, status_code=400)
            sha = hashlib.sha1(f"{repo_id}{len(self.repos[repo_id])}{summary}{time.time()}".encode()).hexdigest()
            self.repos[repo_id].append((sha, files))
            return {"commitUrl": f"{self.url}/{repo_id}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None}

        @app.get("/api/models/{owner}/{name}/revision/{revision}")
        async def info(owner: str, name: str, revision: str):
            repo_id = f"{owner}/{name}"
            if repo_id not in self.repos:
                return _error(404, "RepoNotFound", "Repository not found")
            commit = self._commit(repo_id, revision)
            if commit is None:
                return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return {"id": repo_id, "modelId": repo_id, "sha": commit[0], "private": False,
                    "siblings": [{"rfilename": p} for p in sorted(commit[1])]}

        @app.get("/api/models/{owner}/{name}/tree/{revision}")
        async def tree(owner: str, name: str, revision: str):
            commit = self._commit(f"{owner}/{name}", revision)
            if commit is None:
                return _error(404, "RepoNotFound", "Repository not found")
            return [{"type": "file", "path": p, "size": len(d), "oid": git_blob_sha(d)}
                    for p, d in sorted(commit[1].items())]

        @app.api_route("/{owner}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
        async def resolve(owner: str, name: str, revision: str, path: str, request: Request):
            commit = self._commit(f"{owner}/{name}", revision)
            if commit is None:
                return _error(404, "RepoNotFound", "Repository not found")
            if path not in commit[1]:
                return _error(404, "EntryNotFound", f"{path} does not exist")
            data = commit[1][path]
            headers = {"X-Repo-Commit": commit[0], "ETag": f'"{git_blob_sha(data)}"',
                       "Content-Length": str(len(data))}
            return Response(b"" if request.method == "HEAD" else data, headers=headers,
                            media_type="application/octet-stream")

        return app

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the stand-in Hub server did not start")
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)
