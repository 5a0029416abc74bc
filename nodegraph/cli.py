"""The `nodegraph` command: run, validate and list workflows' nodes from a terminal."""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .app import AppConfig, build_engine
from .cli_train import add_train_parser
from .errors import Interrupted, NodeExecutionError, ValidationFailed
from .formats import run_metadata, load_workflow_file, map_models
from .hooks import Hooks, RunInfo
from .registry import NodeRegistry
from .workflow import Workflow, WorkflowFormatError


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def parse_override(text: str) -> tuple[str, str, Any]:
    """`NODE_ID.INPUT=VALUE`; VALUE is read as JSON when it parses (5, 1.5, true, "x"), else as text."""
    target, sep, raw = text.partition("=")
    node_id, dot, name = target.partition(".")
    if not sep or not dot or not node_id or not name:
        raise CliError(f"--set {text!r}: expected NODE_ID.INPUT=VALUE, e.g. --set 3.seed=42")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return node_id, name, value


class ProgressBar(Hooks):
    """A terminal progress bar over the nodes to execute, with the current node's steps."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def run_start(self, run: RunInfo) -> None:
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=len(run.execute), unit="node", file=sys.stderr, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} nodes [{elapsed}<{remaining}]{postfix}")

    def node_start(self, run: RunInfo, node_id: str, node_type: str) -> None:
        if self.bar is not None:
            self.bar.set_description(f"{node_type} #{node_id}")

    def progress(self, run: RunInfo, node_id: str, value: int, total: int, preview: Any = None) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"step {value}/{total}")

    def node_end(self, run: RunInfo, node_id: str, node_type: str, *, cached: bool, ui: dict[str, Any],
                 seconds: float) -> None:
        if self.bar is not None and not cached:
            self.bar.set_postfix_str("")
            self.bar.update(1)

    def run_end(self, run: RunInfo, status: str, error: BaseException | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _config(args: argparse.Namespace, **paths: Any) -> AppConfig:
    options: dict[str, Any] = dict(
        output_dir=Path(args.output_dir), input_dir=Path(args.input_dir or "input"), models_dir=Path(args.models_dir),
        extra_model_dirs=[Path(p) for p in args.extra_models_dir], device=args.device, precision=args.precision,
        unet_precision=args.unet_precision, text_precision=args.text_precision, vae_precision=args.vae_precision,
        prefer_bf16=args.bf16, vram_mode=args.vram_mode, reserve_vram_gb=args.reserve_vram,
        ram_budget_gb=args.ram_budget, compile=args.compile, preview_method=args.preview_method,
    )
    options.update(paths)
    return AppConfig(**options)


def parse_model_map(items: list[str]) -> dict[str, str]:
    """`--map-model OLD=NEW` pairs; a downloaded workflow's model names become the ones that are here."""
    mapping = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise CliError(f"--map-model {item!r}: expected OLD=NEW, e.g. --map-model v1-5-pruned-emaonly.ckpt=sd15.safetensors")
        mapping[old] = new
    return mapping


def _load(args: argparse.Namespace, engine: Any) -> Workflow:
    workflow = load_workflow_file(args.workflow, engine.registry)
    workflow = map_models(workflow, parse_model_map(getattr(args, "map_model", [])))
    for override in args.set:
        node_id, name, value = parse_override(override)
        try:
            workflow = workflow.with_widget(node_id, name, value)
        except KeyError as exc:
            raise CliError(f"--set {override!r}: {exc.args[0]}") from None
    return workflow


def cmd_run(args: argparse.Namespace) -> int:
    engine = build_engine(_config(args))
    workflow = _load(args, engine)
    result = engine.run(workflow, hooks=[ProgressBar(enabled=not args.quiet)],
                        metadata=run_metadata(workflow, engine.registry))
    for node_id, ui in result.ui.items():
        for key in ("images", "files"):
            for entry in ui.get(key, []):
                base = engine.env.output_dir if entry.get("type", "output") == "output" else engine.env.temp_dir
                print(Path(base, entry.get("subfolder", ""), entry["filename"]))
    print(f"done in {result.seconds:.2f} s: {len(result.executed)} node(s) run, {len(result.cached)} cached",
          file=sys.stderr)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    engine = build_engine(_config(args))
    workflow = _load(args, engine)
    graph = engine.compile(workflow)
    print(f"{args.workflow}: valid ({len(graph.nodes)} nodes, outputs {', '.join(graph.outputs)})")
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    engine = build_engine(_config(args))
    schemas = sorted(engine.registry.schemas(), key=lambda s: (s.category, s.type_id))
    if args.json:
        print(json.dumps([s.model_dump(mode="json") for s in schemas], indent=2))
        return 0
    for schema in schemas:
        ins = ", ".join(f"{i.name}: {i.type}{'?' if i.optional else ''}" for i in schema.inputs)
        outs = ", ".join(f"{o.name}: {o.type}" for o in schema.outputs) or ("(output node)" if schema.output_node else "")
        print(f"{schema.type_id:32} [{schema.category}] ({ins}) -> {outs}")
    for pack, error in engine.registry.load_errors.items():
        print(f"warning: node pack {pack!r} failed to load: {error}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodegraph", description="Typed node-graph workflows for Stable Diffusion.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--output-dir", default="output", help="where output nodes write (default: ./output)")
    common.add_argument("--input-dir", default="input", help="where LoadImage reads (default: ./input)")
    common.add_argument("--models-dir", default="models", help="models root with ComfyUI folder names")
    common.add_argument("--extra-models-dir", action="append", default=[], metavar="DIR",
                        help="another models root, e.g. an existing ComfyUI models/ tree (repeatable)")
    common.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    precisions = ["auto", "fp32", "bf16", "fp16"]
    common.add_argument("--precision", default="auto", choices=precisions,
                        help="every part's precision (auto: fp16 on CUDA, the VAE fp32 unless its config allows "
                             "fp16; fp32 on CPU)")
    for part in ("unet", "text", "vae"):
        common.add_argument(f"--{part}-precision", choices=precisions, default=None,
                            help=f"the {part} precision (default: --precision)")
    common.add_argument("--bf16", action="store_true", help="auto picks bf16 rather than fp16 where the GPU has it")
    memory = common.add_mutually_exclusive_group()
    for mode, text in (("highvram", "keep every model on the GPU"),
                       ("normalvram", "keep models on the GPU while they fit, the least recently used move to RAM "
                                      "(default)"),
                       ("lowvram", "keep weights in RAM and stream each block to the GPU while it runs"),
                       ("cpu", "compute on the CPU")):
        memory.add_argument(f"--{mode}", dest="vram_mode", action="store_const", const=mode, help=text)
    common.set_defaults(vram_mode="normalvram")
    common.add_argument("--reserve-vram", type=float, default=None, metavar="GB",
                        help="GPU memory kept free for activations (default: 1 GB or 10%% of the GPU)")
    common.add_argument("--ram-budget", type=float, default=None, metavar="GB",
                        help="RAM loaded models may use (default: what is available at start, less a reserve)")
    common.add_argument("--compile", action="store_true",
                        help="torch.compile the UNet (compiled once per shape, reused across prompts)")
    common.add_argument("--preview-method", default="auto", choices=["auto", "latent2rgb", "taesd", "none"],
                        help="step previews: TAESD's decoder when in models/vae_approx (auto, taesd), a linear "
                             "projection (latent2rgb), or none")
    common.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext, func in (("run", "run a workflow", cmd_run), ("validate", "check a workflow", cmd_validate)):
        p = sub.add_parser(name, parents=[common], help=helptext)
        p.add_argument("workflow", help="workflow file: ours, ComfyUI's (UI or API JSON), or a PNG carrying one")
        p.add_argument("--map-model", action="append", default=[], metavar="OLD=NEW",
                       help="use model NEW wherever the workflow names OLD (repeatable)")
        p.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                       help="override a widget value, e.g. --set 3.seed=42 (repeatable)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        p.set_defaults(func=func)
    p = sub.add_parser("nodes", parents=[common], help="list node types")
    p.add_argument("--json", action="store_true", help="print the declarations as JSON")
    p.set_defaults(func=cmd_nodes)
    _add_serve_parser(sub, common)
    add_train_parser(sub, common)
    return parser


def load_node_packs(specs: list[str]) -> NodeRegistry:
    """A registry filled by `MODULE:FUNCTION` register functions (instead of the installed entry points)."""
    registry = NodeRegistry()
    for spec in specs:
        module_name, _, function_name = spec.partition(":")
        try:
            register = getattr(importlib.import_module(module_name), function_name or "register")
            register(registry)
        except (ImportError, AttributeError) as exc:
            raise CliError(f"--nodes-module {spec!r}: {exc}") from None
    return registry


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import ServerConfig, run_server  # only `serve` needs aiohttp

    from .server.comfy_frontend import FrontEndMissing
    from .server.queue_store import StoreLocked, check_not_locked

    data_dir = Path(args.data_dir)
    if args.port < 0 or args.port > 65535:
        raise CliError(f"--port {args.port}: not a TCP port")
    token = args.token or os.environ.get("NODEGRAPH_TOKEN") or None
    server = ServerConfig(host=args.listen, port=args.port, token=token, data_dir=data_dir,
                          max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                          max_upload_pixels=int(args.max_upload_megapixels * 1_000_000), front_end=args.front_end)
    try:
        check_not_locked(server.database_path)  # before loading the node packs, which takes seconds
    except StoreLocked as exc:
        raise CliError(f"{exc} (use another --data-dir)") from None
    config = _config(args, input_dir=Path(args.input_dir) if args.input_dir else data_dir / "input",
                     temp_dir=data_dir / "temp")
    engine = build_engine(config, load_node_packs(args.nodes_module) if args.nodes_module else None)
    for pack, error in engine.registry.load_errors.items():
        print(f"warning: node pack {pack!r} failed to load: {error}", file=sys.stderr)
    try:
        run_server(engine, server, access_log=args.verbose)
    except StoreLocked as exc:
        raise CliError(f"{exc} (use another --data-dir)") from None
    except FrontEndMissing as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot listen on {args.listen}:{args.port}: {exc.strerror or exc}") from None
    return 0


def _add_serve_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    serve_common = copy.deepcopy(common)  # its own copy: serve's --input-dir defaults into --data-dir
    serve_common.set_defaults(input_dir=None)
    for action in serve_common._actions:
        if action.dest == "input_dir":
            action.help = "uploads and the files LoadImage reads (default: DATA_DIR/input)"
    p = sub.add_parser("serve", parents=[serve_common], help="serve the ComfyUI-compatible HTTP/WebSocket API",
                       description="Serve ComfyUI's HTTP and WebSocket API (and the editor) for headless runs.")
    p.add_argument("--listen", nargs="?", const="0.0.0.0", default="127.0.0.1", metavar="HOST",
                   help="address to bind (default 127.0.0.1; a bare --listen means 0.0.0.0, every interface)")
    p.add_argument("--port", type=int, default=8188, help="TCP port (default 8188, as ComfyUI)")
    p.add_argument("--token", default=None,
                   help="require 'Authorization: Bearer TOKEN' on every request (default: $NODEGRAPH_TOKEN)")
    p.add_argument("--data-dir", default="nodegraph-data",
                   help="queue/history database, uploads (input/) and temp files (default ./nodegraph-data)")
    p.add_argument("--max-upload-mb", type=float, default=50, help="largest accepted upload (default 50 MB)")
    p.add_argument("--max-upload-megapixels", type=float, default=64,
                   help="most pixels an uploaded image may have (default 64 million)")
    p.add_argument("--nodes-module", action="append", default=[], metavar="MODULE:FUNCTION",
                   help="load node packs from these register functions instead of the installed ones (repeatable)")
    p.add_argument("--front-end", choices=("nodegraph", "comfyui"), default="nodegraph",
                   help="the web page at /: our editor (default) or ComfyUI's own frontend, from the "
                        "comfyui-frontend extra (pip install 'nodegraph[comfyui-frontend]'); the API is the same")
    p.set_defaults(func=cmd_serve)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except (CliError, WorkflowFormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValidationFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except NodeExecutionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.verbose:
            print(exc.traceback, file=sys.stderr)
        return 4
    except (Interrupted, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
