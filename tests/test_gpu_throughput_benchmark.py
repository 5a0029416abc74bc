"""Smoke test of tests/benchmarks/gpu_throughput.py: its --quick run goes through the whole path (export, load,
the txt2img workflow, timing hooks) on tiny models and ends with one JSON line of figures (~10 s here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parent / "benchmarks" / "gpu_throughput.py"


def test_quick_run_prints_figures_as_one_json_line(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    # run from elsewhere: the benchmark must measure its own checkout, not an installed (editable) other one
    done = subprocess.run([sys.executable, str(BENCHMARK), "--quick", "--out", str(out)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures == json.loads(out.read_text())
    assert figures["code_root"] == str(BENCHMARK.parents[2])
    assert figures["mode"] == "quick" and figures["device"] in ("cpu", "cuda") and figures["note"]
    for model in ("sd15", "sdxl"):
        assert figures[f"{model}_eager_it_s"] > 0 and figures[f"{model}_eager_vae_decode_s"] > 0
        assert figures[f"{model}_attention_processors"] == ["AttnProcessor2_0"]
        compiled = figures[f"{model}_compiled_it_s"]
        assert compiled is None and figures["compiled_note"] or compiled > 0
    assert figures["embedded_images_s"] > 0 and figures["embedded_batch"] == 2
