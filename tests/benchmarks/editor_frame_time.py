"""Frame time of the editor with a 500-node graph, measured in a real browser (Playwright + Debian's Chromium).

Starts `nodegraph serve` on a free loopback port (temporary folders, the real node set and the browser-test
pack), opens the editor, drops a 500-node workflow (100 chains of 5 nodes, 300 links) on the canvas and
measures frames at three zooms: "fit" (the "." key: readable detail), "overview" (zoomed out as far as the
editor goes, 0.1: about 490 of the 500 nodes in view at 1440 px) and "mid" (low detail, about a third of them in view), then while panning with the mouse.

Figures per phase (milliseconds): `full_frame_*` is one frame drawn and rasterised (a pixel is read back, so
the GPU-less rasteriser has finished): the whole cost of a frame; `draw_*` is the JavaScript drawing alone of
the frames drawn while the mouse pans; `interval_*` is the time between those frames (16.7 ms = 60 fps).
Target (issue #16): a frame <= 16 ms. Last line: one JSON object of figures.

    python tests/benchmarks/editor_frame_time.py [--frames 40] [--width 1440 --height 900]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BROWSER_TESTS = REPO / "tests" / "browser"
sys.path.insert(0, str(BROWSER_TESTS))
sys.path.insert(0, str(REPO))

from shared_page import big_workflow  # noqa: E402

CHROMIUM = os.environ.get("NODEGRAPH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TARGET_MS = 16.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(BROWSER_TESTS), str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    port = free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [sys.executable, "-m", "nodegraph.cli", "serve", "--port", str(port), "--data-dir", str(root / "data"),
         "--output-dir", str(root / "output"), "--models-dir", str(root / "models"), "--device", "cpu",
         "--nodes-module", "nodes:register", "--nodes-module", "browser_nodes:register"],
        env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/object_info", timeout=5):
                return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError((root / "server.log").read_text()[-2000:]) from None
            time.sleep(0.2)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def full_frames(page, frames: int) -> dict:
    times = [page.evaluate("window.nodegraphEditor.measureFullFrame()") for _ in range(frames)]
    in_view = page.evaluate("window.nodegraphEditor.nodesInView()")
    scale = page.evaluate("window.nodegraphEditor.view().scale")
    return {"nodes_in_view": in_view, "scale": round(scale, 3), "full_frame_ms_median": round(statistics.median(times), 2),
            "full_frame_ms_p95": round(percentile(times, 0.95), 2), "full_frame_ms_max": round(max(times), 2)}


def pan_frames(page, box: dict) -> dict:
    page.evaluate("window.nodegraphEditor.resetFrameStats()")
    y = box["y"] + box["height"] * 0.5
    page.mouse.move(box["x"] + box["width"] * 0.8, y)
    page.mouse.down(button="middle")
    for sweep in range(4):  # back and forth across the canvas
        end = 0.2 if sweep % 2 == 0 else 0.8
        page.mouse.move(box["x"] + box["width"] * end, y, steps=40)
    page.mouse.up(button="middle")
    page.wait_for_timeout(100)
    stats = page.evaluate("window.nodegraphEditor.frameStats()")
    draws, stamps = stats["draws"], stats["stamps"]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"frames": len(draws), "draw_ms_median": round(statistics.median(draws), 2),
            "draw_ms_p95": round(percentile(draws, 0.95), 2),
            "interval_ms_median": round(statistics.median(gaps), 2) if gaps else None}


def measure(url: str, frames: int, width: int, height: int, workdir: Path) -> dict:
    from playwright.sync_api import sync_playwright

    path = workdir / "big.json"
    path.write_text(json.dumps(big_workflow(100)))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(url + "/")
        page.wait_for_function("window.nodegraphEditor && window.nodegraphEditor.ready()", timeout=30000)
        page.evaluate(
            """(text) => {
                const transfer = new DataTransfer();
                transfer.items.add(new File([text], "big.json", { type: "application/json" }));
                const canvas = document.getElementById("canvas");
                for (const type of ["dragenter", "dragover", "drop"]) {
                    canvas.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
                }
            }""", path.read_text())
        page.wait_for_function("window.nodegraphEditor.nodes().length === 500", timeout=30000)
        box = page.locator("#canvas").bounding_box()
        centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.click(*centre)
        page.keyboard.press("Escape")
        page.keyboard.press(".")
        phases = {"fit": full_frames(page, frames)}
        phases["fit"].update(pan_frames(page, box))
        page.mouse.move(*centre)
        for _ in range(60):  # zoom out until every node is in view
            if page.evaluate("window.nodegraphEditor.nodesInView()") >= 500:
                break
            page.mouse.wheel(0, 400)
            page.wait_for_timeout(20)
        phases["overview"] = full_frames(page, frames)
        phases["overview"].update(pan_frames(page, box))
        page.mouse.move(*centre)
        for _ in range(40):  # zoom in to low detail with about a third of the graph in view
            if page.evaluate("window.nodegraphEditor.nodesInView()") <= 170:
                break
            page.mouse.wheel(0, -150)
            page.wait_for_timeout(20)
        phases["mid"] = full_frames(page, frames)
        phases["mid"].update(pan_frames(page, box))
        browser.close()
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        process, url = start_server(root)
        try:
            phases = measure(url, args.frames, args.width, args.height, root)
        finally:
            process.terminate()
            process.wait(timeout=20)
    worst = max(phase["full_frame_ms_median"] for phase in phases.values())
    worst_draw = max(phase["draw_ms_p95"] for phase in phases.values())
    for name, figures in phases.items():
        print(f"{name:9s} {json.dumps(figures)}")
    print(json.dumps({"nodes": 500, "viewport": [args.width, args.height], "phases": phases,
                      "worst_full_frame_ms_median": worst, "worst_draw_ms_p95": worst_draw,
                      "target_ms": TARGET_MS, "meets_target": worst <= TARGET_MS}))


if __name__ == "__main__":
    main()
