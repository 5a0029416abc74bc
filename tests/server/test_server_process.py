"""`nodegraph serve` as a real process: kill -9 mid-prompt, restart, and nothing is lost or run twice."""

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
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="kill -9 semantics")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One `python -m nodegraph.cli serve` process on a loopback port with the test node pack."""

    def __init__(self, root: Path, port: int, token: str | None = None) -> None:
        self.root, self.port, self.token = root, port, token
        paths = (REPO, REPO / "tests", REPO / "tests" / "server")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in paths)}
        env.pop("NODEGRAPH_TOKEN", None)
        if token:
            env["NODEGRAPH_TOKEN"] = token
        self.env = env
        self.log = open(root / f"server-{time.monotonic_ns()}.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nodegraph.cli", "serve", "--port", str(port), "--data-dir", str(root / "data"),
             "--output-dir", str(root / "output"), "--models-dir", str(root / "models"),
             "--device", "cpu", "--nodes-module", "node_pack:register"],
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.request("GET", "/prompt")
                return
            except (urllib.error.URLError, ConnectionError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop(signal.SIGKILL)
                    raise RuntimeError("server did not start:\n" + self.output()) from None
                time.sleep(0.05)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                         headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read() or b"null")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, sig: int) -> int:
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=20)
        finally:
            self.log.close()


def marker(tag: str, steps: int, delay: float = 0.1) -> dict[str, Any]:
    return {"1": {"class_type": "Marker", "inputs": {"tag": tag, "steps": steps, "delay": delay}}}


def wait_for(check, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_and_restart_lose_nothing_and_run_nothing_twice(tmp_path):
    port = free_port()
    server = Server(tmp_path, port)
    try:
        second = subprocess.run([sys.executable, "-m", "nodegraph.cli", "serve", "--port", str(free_port()),
                                 "--data-dir", str(tmp_path / "data"), "--device", "cpu"],
                                cwd=tmp_path, env=server.env, capture_output=True, text=True, timeout=30)
        assert second.returncode == 2 and "in use by another nodegraph server" in second.stderr  # one per data dir
        for tag, steps in (("p1", 3), ("p2", 10), ("p3", 3)):
            server.request("POST", "/prompt", {"prompt": marker(tag, steps), "prompt_id": tag})
        wait_for(lambda: "p1" in server.request("GET", "/history"), what="p1 to finish")
        wait_for(lambda: [i[1] for i in server.request("GET", "/queue")["queue_running"]] == ["p2"], what="p2 to run")
        time.sleep(0.3)  # p2 is mid-run
    finally:
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    log = tmp_path / "output" / "runs.log"
    assert log.read_text().split() == ["p1"]

    server = Server(tmp_path, free_port(), token="tok")  # the token comes from $NODEGRAPH_TOKEN
    try:
        history = wait_for(lambda: (h := server.request("GET", "/history")) and {"p2", "p3"} <= set(h) and h,
                           what="p2 and p3 after the restart")
        assert [history[t]["status"]["status_str"] for t in ("p1", "p2", "p3")] == ["success"] * 3
        assert history["p1"]["outputs"] == {"1": {"tags": ["p1"]}}
        assert log.read_text().split() == ["p1", "p2", "p3"]  # p2 re-run once; p1 never again

        # A clean stop (SIGTERM) mid-prompt puts it back in the queue; the next start finishes it.
        server.request("POST", "/prompt", {"prompt": marker("p4", 20, 0.05), "prompt_id": "p4"})
        wait_for(lambda: server.request("GET", "/queue")["queue_running"], what="p4 to run")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/queue", timeout=5)
            raise AssertionError("request without token accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
    finally:
        assert server.stop(signal.SIGTERM) == 0, server.output()
    server = Server(tmp_path, free_port())
    try:
        wait_for(lambda: "p4" in server.request("GET", "/history"), what="p4 after a clean restart")
        assert log.read_text().split() == ["p1", "p2", "p3", "p4"]
    finally:
        server.stop(signal.SIGTERM)
