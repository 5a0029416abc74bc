"""nodegraph: a typed node-graph workflow engine for Stable-Diffusion-family image generation."""

from .cache import OutputCache
from .context import CancelToken, NodeContext
from .errors import Interrupted, NodeExecutionError, ValidationFailed, ValidationIssue
from .executor import Engine, RunResult
from .hooks import Hooks, RunInfo
from .registry import NodeRegistry, default_registry
from .schema import (Boolean, Combo, Float, InputSpec, Int, Node, NodeResult, NodeSchema, Out, OutputSpec, Socket,
                     String)
from .workflow import Link, NodeInstance, Workflow, load_workflow, parse_workflow, save_workflow

__version__ = "0.1.0"

__all__ = [
    "Boolean", "CancelToken", "Combo", "Engine", "Float", "Hooks", "InputSpec", "Int", "Interrupted", "Link",
    "Node", "NodeContext", "NodeExecutionError", "NodeInstance", "NodeRegistry", "NodeResult", "NodeSchema",
    "OutputCache", "Out", "OutputSpec", "RunInfo", "RunResult", "Socket", "String", "ValidationFailed",
    "ValidationIssue", "Workflow", "default_registry", "load_workflow", "parse_workflow", "save_workflow",
]
