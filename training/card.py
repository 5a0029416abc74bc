"""Keeping the model card's measured sections in step with the run that made the weights.

The card's prose is written by people; the figures between `<!-- NAME:start -->` and `<!-- NAME:end -->`
markers are rewritten by the training and evaluation scripts, so a number in the card is always the
number the shipped file was measured at.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def replace_section(text: str, name: str, body: str) -> str:
    """`text` with the block between the `name` markers replaced by `body` (markers must exist, once)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"the model card needs exactly one {start} ... {end} block")
    return pattern.sub(lambda _: f"{start}\n{body.rstrip()}\n{end}", text)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def training_markdown(record: Mapping[str, Any]) -> str:
    """The training record as a short markdown list plus the full JSON (for exact reproduction)."""
    lines = [f"- Status: {record.get('status')}", f"- Command: `{record.get('command', '')}`",
             f"- Finished: {record.get('finished_utc', '')}"]  # fmt: skip
    hw = record.get("hardware", {})
    lines.append(f"- Hardware: {hw.get('cuda_device') or hw.get('processor')}, {hw.get('cpu_count')} CPUs, "
                 f"{hw.get('torch_threads')} torch threads; torch {hw.get('torch')}, diffusers {hw.get('diffusers')}")  # fmt: skip
    for phase in ("vae", "unet", "decoder"):
        state = record.get(phase) or {}
        if phase == "decoder" and not state:
            continue
        figures = ", ".join(f"{k} {_fmt(v)}" for k, v in (state.get("figures") or {}).items())
        lines.append(f"- {phase.upper()}: {state.get('step')} steps in {state.get('seconds', 0) / 60:.1f} min; "
                     f"last step: {figures}")  # fmt: skip
    latents = record.get("latents") or {}
    if latents:
        lines.append(f"- VAE phase, held-out reconstruction L1 (0..255): {_fmt(latents.get('validation_l1_folded'))}; "
                     f"raw latent mean {[round(v, 3) for v in latents['raw_mean']]}, "
                     f"std {[round(v, 3) for v in latents['raw_std']]} (folded into quant_conv)")  # fmt: skip
    if record.get("validation_l1"):
        l1 = record["validation_l1"]
        lines.append(f"- Shipped VAE's held-out reconstruction L1 (0..255): plain renders {_fmt(l1['plain'])}, "
                     f"striped renders {_fmt(l1['striped'])}")  # fmt: skip
    file = record.get("file") or {}
    if file:
        lines.append(f"- File: {file['bytes'] / 2**20:.2f} MiB, sha256 `{file['sha256']}`")
    lines += ["", "<details><summary>Full record</summary>", "", "```json", json.dumps(record, indent=2), "```",
              "", "</details>"]  # fmt: skip
    return "\n".join(lines)


def evaluation_markdown(metrics: Mapping[str, Any]) -> str:
    """Accuracy table and FID of an evaluation run."""
    lines = ["| prompts | images | foreground colour | background colour | shape | all three |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for group in ("seen", "held_out"):
        g = metrics["groups"][group]
        lines.append(f"| {group.replace('_', '-')} combinations | {g['images']} | {g['fg']:.3f} | {g['bg']:.3f} | "
                     f"{g['shape']:.3f} | {g['all']:.3f} |")  # fmt: skip
    comp = metrics["groups"].get("compositional")
    if comp:
        lines.append(f"\nCompositional prompts ({comp['images']} images): size {comp['size']:.3f}, "
                     f"position {comp['position']:.3f}, all three of fg/bg/shape {comp['all']:.3f}.")  # fmt: skip
    lines.append(f"\nFID ({metrics['fid_features']}) against {metrics['fid_reference_images']} real renders: "
                 f"{metrics['fid']:.3f} (real-vs-real floor {metrics['fid_floor']:.3f}).")  # fmt: skip
    lines.append(f"Classifier on VAE reconstructions of real renders: {metrics['calibration_all']:.3f}.")
    lines.append(f"\nSettings: `{metrics['command']}`; {metrics['seconds']:.0f} s.")
    return "\n".join(lines)


def write_training_record(card: str | Path, record: Mapping[str, Any]) -> None:
    path = Path(card)
    path.write_text(replace_section(path.read_text(), "training-record", training_markdown(record)))


def write_evaluation(card: str | Path, metrics: Mapping[str, Any]) -> None:
    path = Path(card)
    path.write_text(replace_section(path.read_text(), "evaluation", evaluation_markdown(metrics)))
