"""Browser-test fixtures: a real `nodegraph serve` on a free loopback port (temp folders, the test node pack),
and Debian's headless Chromium driven by Playwright. Skipped, with the reason, when either is missing."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from editor_driver import TINY_CHECKPOINT, EditorPage

HERE = Path(__file__).parent
REPO = HERE.parent.parent
ARTIFACTS = HERE / "artifacts"
CHROMIUM = os.environ.get("NODEGRAPH_CHROMIUM", "/usr/bin/chromium")
# Without the networking flags Chromium keeps calling home, which floods a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 860}


@dataclass
class Server:
    url: str
    output_dir: Path
    models_dir: Path
    process: subprocess.Popen


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(HERE), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep)), str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`nodegraph serve` with the real node set, the test pack and a tiny random SD1 checkpoint."""
    env = _server_env()
    root = tmp_path_factory.mktemp("server")
    probe = subprocess.run([sys.executable, "-c", "import nodegraph.server"], env=env, cwd=root,
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"nodegraph.server is not importable here: {probe.stderr.strip().splitlines()[-1:]}")
    models = root / "models"
    output = root / "output"
    port = _free_port()
    with open(root / "server.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "nodegraph.cli", "serve", "--port", str(port), "--data-dir", str(root / "data"),
             "--output-dir", str(output), "--models-dir", str(models), "--device", "cpu",
             "--nodes-module", "nodes:register", "--nodes-module", "browser_nodes:register"],
            env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
        try:
            import tiny_models  # while the server starts (both import torch): a 14 MB random SD1 checkpoint

            tiny_models.write_checkpoint(tiny_models.sd1_modules(seed=3, text_hidden=64),
                                         models / "checkpoints" / TINY_CHECKPOINT)
            url = f"http://127.0.0.1:{port}"
            _wait_until_serving(url, process, root / "server.log")
            yield Server(url=url, output_dir=output, models_dir=models, process=process)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_until_serving(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/object_info", timeout=5) as response:
                json.load(response)
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{log_path.read_text()[-3000:]}") from None
            time.sleep(0.2)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Chromium for one test module. Not longer: Playwright's sync API keeps an asyncio loop running in this
    thread while it is open, which would break later tests that call asyncio.run()."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; never `playwright install`)")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def editor(browser, server: Server) -> Iterator[EditorPage]:
    """A fresh browser context (empty localStorage) on the editor, ready; uncaught page errors fail the test."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    driver = EditorPage(page, server.url)
    page.on("pageerror", lambda exc: driver.errors.append(str(exc)))
    driver.open()
    yield driver
    context.close()
    assert not driver.errors, f"uncaught errors in the page: {driver.errors}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
