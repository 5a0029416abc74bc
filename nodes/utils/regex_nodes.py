"""Regex nodes (ComfyUI's RegexMatch, RegexExtract, RegexReplace), each call under a time limit.

The patterns come from workflows other people share, so every match runs through `timed_regex`: a
catastrophically backtracking pattern fails within `TIME_LIMIT_S` with an error naming the input,
instead of hanging the worker. A malformed pattern behaves as in ComfyUI: no match for RegexMatch,
an empty string for RegexExtract, an error for RegexReplace.
"""

from __future__ import annotations

from typing import Any

from nodegraph import Boolean, Combo, Int, Node, NodeContext, NodeSchema, Out, String

from .timed_regex import PatternError, TimedPattern, flags_of

EXTRACT_MODES = ("First Match", "All Matches", "First Group", "All Groups")


def _flag_inputs(*, optional: bool = False) -> tuple[Any, ...]:
    return (Boolean("case_insensitive", True, optional=optional), Boolean("multiline", False, optional=optional),
            Boolean("dotall", False, optional=optional, tooltip="When on, '.' also matches newline characters."))


def _compile(node: str, pattern: str, flags: int) -> TimedPattern | None:
    """The timed pattern, or None when it does not compile (ComfyUI's match nodes then report no match)."""
    try:
        return TimedPattern(pattern, flags, where=f"{node} input 'regex_pattern'")
    except PatternError:
        return None


def _text(value: str | None) -> str:
    return "" if value is None else value  # a group that took no part in the match


class RegexMatch(Node):
    schema = NodeSchema(type_id="RegexMatch", display_name="Regex Match", category="utils/string",
                        inputs=(String("string", multiline=True), String("regex_pattern", multiline=True),
                                *_flag_inputs()),
                        outputs=(Out("BOOLEAN", "matches"),))

    @classmethod
    def execute(cls, ctx: NodeContext, string: str, regex_pattern: str, case_insensitive: bool, multiline: bool,
                dotall: bool) -> tuple[bool]:
        pattern = _compile("RegexMatch", regex_pattern, flags_of(case_insensitive, multiline, dotall))
        return (pattern is not None and pattern.search(string) is not None,)


class RegexExtract(Node):
    schema = NodeSchema(
        type_id="RegexExtract", display_name="Regex Extract", category="utils/string",
        description="The first match, all matches, or a group of the first or of every match; "
                    "several results are joined with newlines.",
        inputs=(String("string", multiline=True), String("regex_pattern", multiline=True),
                Combo("mode", EXTRACT_MODES), *_flag_inputs(), Int("group_index", 1, min=0, max=100)),
        outputs=(Out("STRING"),))

    @classmethod
    def execute(cls, ctx: NodeContext, string: str, regex_pattern: str, mode: str, case_insensitive: bool,
                multiline: bool, dotall: bool, group_index: int) -> tuple[str]:
        pattern = _compile("RegexExtract", regex_pattern, flags_of(case_insensitive, multiline, dotall))
        if pattern is None:
            return ("",)
        groups = pattern.compiled.groups
        if mode == "First Match":
            match = pattern.search(string)
            return (match.group(0) if match else "",)
        if mode == "All Matches":  # re.findall's items: the whole match, or group 1 when there are groups
            return ("\n".join(_text(m.group(1 if groups else 0)) for m in pattern.finditer(string)),)
        if mode == "First Group":
            match = pattern.search(string)
            return (_text(match.group(group_index)) if match and groups >= group_index else "",)
        if groups == 0 or groups < group_index:  # "All Groups" of a pattern without that group
            return ("",)
        return ("\n".join(_text(m.group(group_index)) for m in pattern.finditer(string)),)


class RegexReplace(Node):
    schema = NodeSchema(
        type_id="RegexReplace", display_name="Regex Replace", category="utils/string",
        description="Find and replace text using regex patterns.",
        inputs=(String("string", multiline=True), String("regex_pattern", multiline=True),
                String("replace", multiline=True), *_flag_inputs(optional=True),
                Int("count", 0, min=0, max=100, optional=True,
                    tooltip="Most replacements to make; 0 replaces every match.")),
        outputs=(Out("STRING"),))

    @classmethod
    def execute(cls, ctx: NodeContext, string: str, regex_pattern: str, replace: str, case_insensitive: bool = True,
                multiline: bool = False, dotall: bool = False, count: int = 0) -> tuple[str]:
        flags = flags_of(case_insensitive, multiline, dotall)
        try:
            pattern = TimedPattern(regex_pattern, flags, where="RegexReplace input 'regex_pattern'")
        except PatternError as exc:
            raise ValueError(f"RegexReplace input 'regex_pattern': {regex_pattern!r} is not a valid pattern "
                             f"({exc})") from None
        try:
            return (pattern.sub(replace, string, count=count),)
        except PatternError as exc:
            raise ValueError(f"RegexReplace input 'replace': {replace!r} is not a valid replacement "
                             f"({exc})") from None


NODES = (RegexMatch, RegexExtract, RegexReplace)
