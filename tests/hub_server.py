"""A stand-in for the Hugging Face Hub, in memory, for tests that push and pull without a network.

It answers the calls huggingface_hub makes for create_repo, upload_folder, snapshot_download, Space variables and
hardware, and duplicate_repo, for model, dataset and Space repos. It checks what the real Hub checks on those calls:
the repo type in every path, write access to the namespace, that binary files arrive through LFS (a binary file
sent as a regular blob is refused, as the Hub refuses a push of binaries outside LFS/Xet), the sha256 and size of
every LFS object put, and that a commit names only LFS objects that were uploaded and verified.

Xet, the Hub's newer storage protocol, is not spoken here: tests that upload run with HF_HUB_DISABLE_XET=1
(tests/conftest.py), which makes huggingface_hub use the legacy LFS calls below.

Point a process at it with HF_ENDPOINT=<server.url>. ``fail = True`` makes every request answer 500.
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
KINDS = {"models": "model", "datasets": "dataset", "spaces": "space"}  # API path segment -> repo type
PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}  # URL prefix of a repo of each type
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub also sends text files this large through LFS


def git_blob_sha(data: bytes) -> str:
    """The id git gives a file's content; the Hub reports it as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_binary(sample: bytes) -> bool:
    """The Hub's test on a file's first bytes: a NUL byte or bytes that are not UTF-8 make it binary."""
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return b"\0" in sample


def goes_through_lfs(size: int, sample: bytes) -> bool:
    """The Hub's choice for a file, from its size and first bytes: large or binary files go through LFS."""
    return size >= LFS_THRESHOLD or is_binary(sample)


def _error(status: int, code: str | None, message: str) -> JSONResponse:
    # huggingface_hub maps X-Error-Code to RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError.
    return JSONResponse({"error": message}, status_code=status, headers={"X-Error-Code": code} if code else None)


class HubServer:
    def __init__(self, token: str | None = None, user: str = "tester"):
        self.token, self.user, self.fail = token, user, False
        # repo key -> commits, oldest first; a model's key is its id, other types are prefixed ("spaces/a/b")
        self.repos: dict[str, list[tuple[str, dict[str, bytes]]]] = {}
        self.variables: dict[str, dict[str, str]] = {}  # Space key -> its variables
        self.hardware: dict[str, str] = {}  # Space key -> requested hardware flavour
        self.private: set[str] = set()
        self.lfs: dict[str, bytes] = {}  # sha256 -> content, once put and verified
        self._put: dict[str, bytes] = {}  # sha256 -> content, put but not yet verified
        self.app = self._build_app()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ---- repository state ------------------------------------------------------------------
    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes] | None:
        commit = self._commit(PREFIXES[repo_type] + repo_id, revision)
        return None if commit is None else commit[1]

    def _commit(self, key: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        if key not in self.repos:
            return None
        commits = self.repos[key] or [(EMPTY_COMMIT, {})]
        if revision == "main":
            return commits[-1]
        return next((c for c in commits if c[0] == revision), None)

    def _may_write(self, repo_id: str) -> bool:
        return repo_id.split("/")[0] == self.user

    @staticmethod
    def _is_lfs(data: bytes) -> bool:
        return goes_through_lfs(len(data), data[:512])

    # ---- the HTTP API ------------------------------------------------------------------------
    def _build_app(self) -> FastAPI:  # noqa: C901  (one nested function per endpoint)
        app = FastAPI()

        def key_of(kind: str, owner: str, name: str) -> str | None:
            return None if kind not in KINDS else PREFIXES[KINDS[kind]] + f"{owner}/{name}"

        @app.middleware("http")
        async def check(request: Request, call_next):
            if self.fail:
                return JSONResponse({"error": "stand-in Hub is failing on purpose"}, status_code=500)
            # LFS contents are PUT to the storage's own address, which carries its own authorisation (S3 on the Hub)
            writing = request.method == "POST" and request.url.path != "/api/validate-yaml"
            if writing and self.token and request.headers.get("authorization") != f"Bearer {self.token}":
                return JSONResponse({"error": "Invalid credentials in Authorization header"}, status_code=401)
            return await call_next(request)

        @app.get("/api/whoami-v2")
        async def whoami(request: Request):
            if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
                return JSONResponse({"error": "Invalid credentials in Authorization header"}, status_code=401)
            return {"type": "user", "name": self.user, "orgs": [], "auth": {"accessToken": {"role": "write"}}}

        @app.post("/api/repos/create")
        async def create(request: Request):
            body = await request.json()
            repo_type = body.get("type") or "model"
            repo_id = f"{body.get('organization') or self.user}/{body['name']}"
            key, url = PREFIXES[repo_type] + repo_id, f"{self.url}/{PREFIXES[repo_type]}{repo_id}"
            if repo_type == "space" and body.get("sdk") not in ("gradio", "docker", "static"):
                return _error(400, None, "a Space needs an sdk: gradio, docker or static")
            if key in self.repos:
                return JSONResponse({"error": f"You already created this {repo_type} repo", "url": url},
                                    status_code=409)
            if not self._may_write(repo_id):
                return _error(403, None, f"You don't have the rights to create a {repo_type} under the namespace "
                                         f"\"{repo_id.split('/')[0]}\"")
            self.repos[key] = []
            if body.get("private") or body.get("visibility") == "private":
                self.private.add(key)
            if repo_type == "space":
                self.variables[key] = {v["key"]: v["value"] for v in body.get("variables") or []}
                self.hardware[key] = body.get("hardware") or "cpu-basic"
            return {"url": url, "name": repo_id}

        @app.post("/api/validate-yaml")
        async def validate_yaml():
            return {"errors": [], "warnings": []}

        @app.post("/api/{kind}/{owner}/{name}/preupload/{revision}")
        async def preupload(kind: str, owner: str, name: str, revision: str, request: Request):
            key = key_of(kind, owner, name)
            if key not in self.repos:
                return _error(404, "RepoNotFound", "Repository not found")
            if not self._may_write(f"{owner}/{name}"):
                return _error(403, None, f"You don't have write access to {owner}/{name}")
            files = (await request.json())["files"]
            return {"files": [{"path": f["path"], "shouldIgnore": False, "oid": None,
                               "uploadMode": "lfs" if goes_through_lfs(f["size"], base64.b64decode(f["sample"]))
                               else "regular"} for f in files]}

        @app.post("/{prefix:path}.git/info/lfs/objects/batch")
        async def lfs_batch(prefix: str, request: Request):
            body = await request.json()
            repo_id = prefix.split("/", 1)[1] if prefix.startswith(("spaces/", "datasets/")) else prefix
            if prefix not in self.repos:
                return _error(404, "RepoNotFound", "Repository not found")
            if body.get("operation") != "upload" or body.get("hash_algo", "sha256") != "sha256":
                return _error(400, None, "only sha256 uploads are supported")
            if not self._may_write(repo_id):
                return _error(403, None, f"You don't have write access to {repo_id}")
            objects = []
            for obj in body["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in self.lfs:  # no actions: the Hub has it already
                    entry["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}/{obj['size']}"},
                                        "verify": {"href": f"{self.url}/lfs-verify"}}
                objects.append(entry)
            return JSONResponse({"transfer": "basic", "objects": objects},
                                media_type="application/vnd.git-lfs+json")

        @app.put("/lfs-upload/{oid}/{size}")
        async def lfs_put(oid: str, size: int, request: Request):
            data = await request.body()
            if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
                return _error(400, None, f"LFS object {oid}: content does not match its sha256 and size")
            self._put[oid] = data
            return Response(status_code=200)

        @app.post("/lfs-verify")
        async def lfs_verify(request: Request):
            body = await request.json()
            data = self._put.pop(body["oid"], None)
            if data is None or len(data) != body["size"]:
                return _error(404, None, f"LFS object {body['oid']} was not uploaded")
            self.lfs[body["oid"]] = data
            return {"message": "ok"}

        @app.post("/api/{kind}/{owner}/{name}/commit/{revision}")
        async def commit(kind: str, owner: str, name: str, revision: str, request: Request):
            key = key_of(kind, owner, name)
            parent = self._commit(key, revision) if key else None
            if parent is None:
                return _error(404, "RepoNotFound", "Repository not found")
            if not self._may_write(f"{owner}/{name}"):
                return _error(403, None, f"You don't have write access to {owner}/{name}")
            files, summary = dict(parent[1]), ""
            for line in (await request.body()).splitlines():
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "header":
                    summary = value.get("summary", "")
                elif item["key"] == "file":
                    data = base64.b64decode(value["content"])
                    if self._is_lfs(data):
                        return _error(400, None, f"Your push was rejected because it contains binary files: "
                                                 f"{value['path']} must be stored through LFS or Xet")
                    files[value["path"]] = data
                elif item["key"] == "lfsFile":
                    data = self.lfs.get(value["oid"])
                    if data is None or len(data) != value["size"]:
                        return _error(400, None, f"{value['path']}: LFS object {value['oid']} was never uploaded")
                    files[value["path"]] = data
                elif item["key"] == "deletedFile":
                    files.pop(value["path"], None)
                elif item["key"] == "deletedFolder":
                    files = {p: d for p, d in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
                else:
                    return JSONResponse({"error": f"unsupported commit operation {item['key']}"}, status_code=400)
            sha = hashlib.sha1(f"{key}{len(self.repos[key])}{summary}{time.time()}".encode()).hexdigest()
            self.repos[key].append((sha, files))
            return {"commitUrl": f"{self.url}/{key}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None}

        @app.get("/api/{kind}/{owner}/{name}")
        @app.get("/api/{kind}/{owner}/{name}/revision/{revision}")
        async def info(kind: str, owner: str, name: str, revision: str = "main"):
            key = key_of(kind, owner, name)
            if key not in self.repos:
                return _error(404, "RepoNotFound", "Repository not found")
            commit = self._commit(key, revision)
            if commit is None:
                return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            answer = {"id": f"{owner}/{name}", "sha": commit[0], "private": key in self.private,
                      "siblings": [{"rfilename": p} for p in sorted(commit[1])]}
            if kind == "spaces":
                answer |= {"sdk": "gradio", "runtime": runtime(key)}
            return answer | ({"modelId": f"{owner}/{name}"} if kind == "models" else {})

        @app.get("/api/{kind}/{owner}/{name}/tree/{revision}")
        async def tree(kind: str, owner: str, name: str, revision: str):
            commit = self._commit(key_of(kind, owner, name), revision)
            if commit is None:
                return _error(404, "RepoNotFound", "Repository not found")
            return [{"type": "file", "path": p, "size": len(d), "oid": git_blob_sha(d)}
                    | ({"lfs": {"oid": hashlib.sha256(d).hexdigest(), "size": len(d), "pointerSize": 134}}
                       if self._is_lfs(d) else {})
                    for p, d in sorted(commit[1].items())]

        # ---- Spaces: variables, hardware, duplication ----------------------------------------
        def runtime(key: str) -> dict:
            return {"stage": "BUILDING", "hardware": {"current": None, "requested": self.hardware.get(key)}}

        def variables(key: str) -> dict:
            return {k: {"value": v, "updatedAt": "2026-01-01T00:00:00.000Z"} for k, v in self.variables[key].items()}

        @app.get("/api/spaces/{owner}/{name}/variables")
        async def get_variables(owner: str, name: str):
            key = key_of("spaces", owner, name)
            return variables(key) if key in self.repos else _error(404, "RepoNotFound", "Repository not found")

        @app.post("/api/spaces/{owner}/{name}/variables")
        async def add_variable(owner: str, name: str, request: Request):
            key, body = key_of("spaces", owner, name), await request.json()
            if key not in self.repos:
                return _error(404, "RepoNotFound", "Repository not found")
            if not self._may_write(f"{owner}/{name}"):
                return _error(403, None, f"You don't have write access to {owner}/{name}")
            self.variables[key][body["key"]] = body["value"]
            return variables(key)

        @app.post("/api/spaces/{owner}/{name}/hardware")
        async def request_hardware(owner: str, name: str, request: Request):
            key = key_of("spaces", owner, name)
            if key not in self.repos:
                return _error(404, "RepoNotFound", "Repository not found")
            self.hardware[key] = (await request.json())["flavor"]
            return runtime(key)

        @app.post("/api/spaces/{owner}/{name}/duplicate")
        async def duplicate(owner: str, name: str, request: Request):
            source, body = key_of("spaces", owner, name), await request.json()
            if source not in self.repos or (source in self.private and not self._may_write(f"{owner}/{name}")):
                return _error(404, "RepoNotFound", "Repository not found")
            target_id = body["repository"]
            target = PREFIXES["space"] + target_id
            if target in self.repos:
                return _error(409, None, f"You already created this space repo: {target_id}")
            if not self._may_write(target_id):
                return _error(403, None, f"You don't have the rights to create a space under the namespace "
                                         f"\"{target_id.split('/')[0]}\"")
            sha, files = self._commit(source, "main")
            self.repos[target] = [(hashlib.sha1(f"{target}{sha}".encode()).hexdigest(), dict(files))] if files else []
            self.variables[target] = {v["key"]: v["value"] for v in body.get("variables") or []}
            self.hardware[target] = body.get("hardware") or "cpu-basic"
            if body.get("visibility") == "private" or body.get("private"):
                self.private.add(target)
            return {"url": f"{self.url}/spaces/{target_id}", "filesCopyPending": False}

        # ---- downloads -------------------------------------------------------------------------
        @app.api_route("/{prefix:path}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
        async def resolve(prefix: str, revision: str, path: str, request: Request):
            commit = self._commit(prefix, revision)
            if commit is None:
                return _error(404, "RepoNotFound", "Repository not found")
            if path not in commit[1]:
                return _error(404, "EntryNotFound", f"{path} does not exist")
            data = commit[1][path]
            headers = {"X-Repo-Commit": commit[0], "ETag": f'"{git_blob_sha(data)}"', "Content-Length": str(len(data))}
            if self._is_lfs(data):  # as the Hub sends them for an LFS file
                sha256 = hashlib.sha256(data).hexdigest()
                headers |= {"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data))}
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
