"""A git repository served over smart HTTP on loopback, for Flux's source-controller to clone.

The protocol is git's own: every request is handed to `git http-backend` (the CGI program git ships for
exactly this), so what Flux talks to is a real git server; this module only carries HTTP to and from it,
because Python's http.server no longer runs CGI programs itself. Flux's GitRepository accepts http(s) and
ssh URLs only (not git://), which is why `git daemon` would not do.
"""

from __future__ import annotations

import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _GitHttpBackend(BaseHTTPRequestHandler):
    server: _GitServer

    def do_GET(self) -> None:
        self._run_backend()

    def do_POST(self) -> None:
        self._run_backend()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _run_backend(self) -> None:
        path, _, query = self.path.partition("?")
        body = self._body()
        env = {
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "REMOTE_ADDR": self.client_address[0],
            "PATH": "/usr/bin:/bin",
        }
        done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=False)
        separator = b"\r\n\r\n" if b"\r\n\r\n" in done.stdout else b"\n\n"
        head, _, payload = done.stdout.partition(separator)
        status = 200 if done.returncode == 0 else 500
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        return  # one line per request on stderr would drown a test's output


class _GitServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _GitHttpBackend)
        self.root = root


def _git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


class GitRepository:
    """A bare repository served at `url`, and a working copy of it that `commit` writes, commits and pushes
    (on branch `main`)."""

    def __init__(self, root: Path, name: str = "fleet") -> None:
        self.root = root
        self.bare = root / f"{name}.git"
        self.work = root / f"{name}-work"
        self._server: _GitServer | None = None
        self.url = ""

    def start(self) -> GitRepository:
        self.root.mkdir(parents=True, exist_ok=True)
        _git("init", "--quiet", "--bare", "--initial-branch=main", str(self.bare), cwd=self.root)
        _git("init", "--quiet", "--initial-branch=main", str(self.work), cwd=self.root)
        for key, value in (("user.name", "gitops test"), ("user.email", "gitops@example.invalid")):
            _git("config", key, value, cwd=self.work)
        _git("remote", "add", "origin", str(self.bare), cwd=self.work)
        self._server = _GitServer(self.root)
        threading.Thread(target=self._server.serve_forever, name="git-http", daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/{self.bare.name}"
        return self

    def commit(self, files: dict[str, str], message: str, *, remove: tuple[str, ...] = ()) -> str:
        """Write `files` (path -> text), delete `remove`, commit and push; the new commit's id."""
        for relative, text in files.items():
            path = self.work / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for relative in remove:
            (self.work / relative).unlink()
        _git("add", "--all", cwd=self.work)
        _git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.work)
        _git("push", "--quiet", "origin", "main", cwd=self.work)
        return _git("rev-parse", "HEAD", cwd=self.work)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
