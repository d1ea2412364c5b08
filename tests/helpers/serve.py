"""A real scoring server for the tests: start it on 127.0.0.1 at a free port in its own process
group (mlflow and uvicorn start children), wait for /ping at most SERVE_TIMEOUT_S, post to it,
and kill the whole group."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

SERVE_TIMEOUT_S = 180
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(tracking_uri: str | None = None, **extra: str) -> dict:
    """The test process's environment for a server child: this checkout's radpriv importable, and
    the environment's bin/ on PATH (mlflow starts `uvicorn` by name, as in an activated venv)."""
    env = {**os.environ, **extra,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    with log.open("w") as log_file:
        return subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def start_radpriv_serve(ref: str, port: int, log: Path, env: dict, *options: str) -> subprocess.Popen:
    """`radpriv serve <ref> port=<port> …` in this interpreter."""
    return start([sys.executable, "-m", "radpriv.cli", "serve", ref, f"port={port}", *options], log, env)


def wait_until_ready(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = SERVE_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"the server was not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
    try:  # uvicorn's workers may outlive their parent for a moment
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def post(url: str, payload: dict) -> dict:
    """POST JSON; the decoded answer of a 2xx (an HTTPError otherwise)."""
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def post_raw(url: str, body: bytes, content_type: str = "application/json", timeout: float = 120) -> tuple[int, str]:
    """POST raw bytes; (status, body text) whatever the status."""
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", errors="replace")
