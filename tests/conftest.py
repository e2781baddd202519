"""Shared test fixtures: paths, a script runner, and a local HTTP server (127.0.0.1 only) for downloads."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"  # real third-party data: read it, never copy it in
sys.path.insert(0, str(ROOT))


# every script a test starts runs on one thread: on a shared 2-core machine several one-thread processes are
# several times faster than processes that each start two threads
SCRIPT_ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def run_script(script: str, *args: str, cwd: Path | None = None, env: dict | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a numbered script as a user would (`python 01_preprocess.py ...`), one thread; capture its output."""
    full_env = {**SCRIPT_ENV, **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def main_as_user(monkeypatch, capsys, script: str, main, *args: str) -> tuple[int, str]:
    """A script's main() in-process as `python <script> args` runs it (through run_main): -> (exit code, stderr)."""
    from shelf.errors import run_main

    monkeypatch.setattr(sys, "argv", [script, *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(main)
    return e.value.code, capsys.readouterr().err


def load_script(script: str):
    """Import a numbered script (its name starts with a digit) as a module, to test its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(script).stem.lstrip("0123456789_"), ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def shared_data() -> Path:
    """Real third-party data beside the project (not in users' clones): skipped there, required on CI."""
    if not SHARED_DATA.is_dir():
        missing = f"{SHARED_DATA} is missing (real GRCh38 slice and NT task; only the project's CI has it)"
        pytest.fail(missing) if os.environ.get("CI") else pytest.skip(missing)
    return SHARED_DATA


@dataclass
class LocalServer:
    """Serves files from `root` over HTTP/1.1 on 127.0.0.1, honouring Range requests.

    `cut_after[name] = n` makes the next response for /name stop after n body bytes (a dropped
    connection, once), so download resume can be tested; `requests` records (path, Range header).
    """
    root: Path
    url: str = ""
    cut_after: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)


def _make_handler(server: LocalServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):
            name = self.path.lstrip("/").split("?")[0]
            server.requests.append((name, self.headers.get("Range")))
            path = server.root / name
            if not path.is_file():
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = path.read_bytes()
            start, status = 0, 200
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                start = int(rng[len("bytes="):].split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            body = data[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            cut = server.cut_after.pop(name, None)
            if cut is not None:
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # drop the connection mid-body
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def http_server(tmp_path):
    """A LocalServer serving tmp_path/'www'; put files there, then fetch f'{server.url}/{name}'."""
    root = tmp_path / "www"
    root.mkdir()
    server = LocalServer(root=root)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(server))
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield server
    httpd.shutdown()
    httpd.server_close()
