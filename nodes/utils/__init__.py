"""Utility nodes as ComfyUI's menu groups them: primitives, strings (plain and regex), text preview."""

from __future__ import annotations

from .preview import PreviewAny
from .primitives import PrimitiveBoolean, PrimitiveFloat, PrimitiveInt, PrimitiveString, PrimitiveStringMultiline
from .regex_nodes import RegexExtract, RegexMatch, RegexReplace
from .strings import (CaseConverter, SaveText, StringCompare, StringConcatenate, StringContains, StringLength,
                      StringReplace, StringSubstring, StringTrim)
from . import preview, primitives, regex_nodes, strings

NODES = (*primitives.NODES, *strings.NODES, *regex_nodes.NODES, *preview.NODES)

__all__ = [
    "CaseConverter", "NODES", "PreviewAny", "PrimitiveBoolean", "PrimitiveFloat", "PrimitiveInt", "PrimitiveString",
    "PrimitiveStringMultiline", "RegexExtract", "RegexMatch", "RegexReplace", "SaveText", "StringCompare",
    "StringConcatenate", "StringContains", "StringLength", "StringReplace", "StringSubstring", "StringTrim",
]
