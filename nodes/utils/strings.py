"""String nodes (ComfyUI's nodes_string, category utils/string) and SaveText."""

from __future__ import annotations

from typing import Any

from nodegraph import Boolean, Combo, Int, Node, NodeContext, NodeResult, NodeSchema, Out, Socket, String
from nodegraph.paths import output_prefix_problem, save_new_file

CASE_MODES = ("UPPERCASE", "lowercase", "Capitalize", "Title Case")
TRIM_MODES = ("Both", "Left", "Right")
COMPARE_MODES = ("Starts With", "Ends With", "Equal")


class StringConcatenate(Node):
    schema = NodeSchema(type_id="StringConcatenate", display_name="Concatenate", category="utils/string",
                        inputs=(String("string_a", multiline=True), String("string_b", multiline=True),
                                String("delimiter", "")),
                        outputs=(Out("STRING"),))

    @classmethod
    def execute(cls, ctx: NodeContext, string_a: str, string_b: str, delimiter: str) -> tuple[str]:
        return (f"{string_a}{delimiter}{string_b}",)


class StringSubstring(Node):
    schema = NodeSchema(type_id="StringSubstring", display_name="Substring", category="utils/string",
                        description="Python slicing string[start:end]: negative indices count from the end.",
                        inputs=(String("string", multiline=True), Int("start"), Int("end")),
                        outputs=(Out("STRING"),))

    @classmethod
    def execute(cls, ctx: NodeContext, string: str, start: int, end: int) -> tuple[str]:
        return (string[start:end],)


class StringLength(Node):
    schema = NodeSchema(type_id="StringLength", display_name="Length", category="utils/string",
                        inputs=(String("string", multiline=True),), outputs=(Out("INT", "length"),))

    @classmethod
    def execute(cls, ctx: NodeContext, string: str) -> tuple[int]:
        return (len(string),)


class CaseConverter(Node):
    schema = NodeSchema(type_id="CaseConverter", display_name="Case Converter", category="utils/string",
                        inputs=(String("string", multiline=True), Combo("mode", CASE_MODES)),
                        outputs=(Out("STRING"),))

    @classmethod
    def execute(cls, ctx: NodeContext, string: str, mode: str) -> tuple[str]:
        convert = {"UPPERCASE": str.upper, "lowercase": str.lower, "Capitalize": str.capitalize,
                   "Title Case": str.title}[mode]
        return (convert(string),)


class StringTrim(Node):
    schema = NodeSchema(type_id="StringTrim", display_name="Trim", category="utils/string",
                        description="Removes whitespace from both ends, the left or the right.",
                        inputs=(String("string", multiline=True), Combo("mode", TRIM_MODES)),
                        outputs=(Out("STRING"),))

    @classmethod
    def execute(cls, ctx: NodeContext, string: str, mode: str) -> tuple[str]:
        trim = {"Both": str.strip, "Left": str.lstrip, "Right": str.rstrip}[mode]
        return (trim(string),)


class StringReplace(Node):
    schema = NodeSchema(type_id="StringReplace", display_name="Replace", category="utils/string",
                        description="Replaces every occurrence of `find` (plain text, not a pattern).",
                        inputs=(String("string", multiline=True), String("find", multiline=True),
                                String("replace", multiline=True)),
                        outputs=(Out("STRING"),))

    @classmethod
    def execute(cls, ctx: NodeContext, string: str, find: str, replace: str) -> tuple[str]:
        return (string.replace(find, replace),)


class StringContains(Node):
    schema = NodeSchema(type_id="StringContains", display_name="Contains", category="utils/string",
                        inputs=(String("string", multiline=True), String("substring", multiline=True),
                                Boolean("case_sensitive", True)),
                        outputs=(Out("BOOLEAN", "contains"),))

    @classmethod
    def execute(cls, ctx: NodeContext, string: str, substring: str, case_sensitive: bool) -> tuple[bool]:
        if not case_sensitive:
            string, substring = string.lower(), substring.lower()
        return (substring in string,)


class StringCompare(Node):
    schema = NodeSchema(type_id="StringCompare", display_name="Compare", category="utils/string",
                        description="Whether string_a starts with, ends with or equals string_b.",
                        inputs=(String("string_a", multiline=True), String("string_b", multiline=True),
                                Combo("mode", COMPARE_MODES), Boolean("case_sensitive", True)),
                        outputs=(Out("BOOLEAN"),))

    @classmethod
    def execute(cls, ctx: NodeContext, string_a: str, string_b: str, mode: str,
                case_sensitive: bool) -> tuple[bool]:
        if not case_sensitive:
            string_a, string_b = string_a.lower(), string_b.lower()
        compare = {"Starts With": str.startswith, "Ends With": str.endswith, "Equal": str.__eq__}[mode]
        return (bool(compare(string_a, string_b)),)


class SaveText(Node):
    schema = NodeSchema(type_id="SaveText", display_name="Save Text", category="utils/string",
                        description="Writes the text to a new file in the output folder.",
                        inputs=(Socket("text", "STRING"),
                                String("filename_prefix", "nodegraph", check=output_prefix_problem)),
                        output_node=True)

    @classmethod
    def execute(cls, ctx: NodeContext, text: str, filename_prefix: str) -> NodeResult:
        path = save_new_file(ctx.env.output_dir, filename_prefix, "txt", text.encode("utf-8"))
        subfolder = path.parent.relative_to(ctx.env.output_dir.resolve()).as_posix()
        entry: dict[str, Any] = {"filename": path.name, "subfolder": "" if subfolder == "." else subfolder,
                                 "type": "output"}
        return NodeResult(ui={"text": [text], "files": [entry]})


NODES = (StringConcatenate, StringSubstring, StringLength, CaseConverter, StringTrim, StringReplace, StringContains,
         StringCompare, SaveText)
