"""String, regex, primitive and preview nodes compute what ComfyUI's do; hostile patterns fail fast."""

import json
import re
import time

import pytest
import torch

from nodegraph import NodeContext
from nodes.sd.types import Latent
from nodes.utils import (CaseConverter, PreviewAny, PrimitiveBoolean, PrimitiveFloat, PrimitiveInt, PrimitiveString,
                         PrimitiveStringMultiline, RegexExtract, RegexMatch, RegexReplace, StringCompare,
                         StringConcatenate, StringContains, StringLength, StringReplace, StringSubstring, StringTrim)

CTX = NodeContext("1", "Test", None)
HOSTILE = ("(a|aa)+$", "a" * 64 + "b")
"""Exponential backtracking: Python's re would run for ages on this."""


def run(node, **inputs):
    return node.execute(CTX, **inputs)[0]


def test_plain_string_nodes():
    assert run(StringConcatenate, string_a="a", string_b="b", delimiter=", ") == "a, b"
    assert run(StringSubstring, string="hello world", start=-5, end=11) == "world"
    assert run(StringSubstring, string="hello", start=1, end=-1) == "ell"
    assert run(StringLength, string="héllo\n") == 6
    text = "hELLO wORLD"
    assert [run(CaseConverter, string=text, mode=m) for m in ("UPPERCASE", "lowercase", "Capitalize", "Title Case")] \
        == ["HELLO WORLD", "hello world", "Hello world", "Hello World"]
    assert [run(StringTrim, string="  x \n", mode=m) for m in ("Both", "Left", "Right")] == ["x", "x \n", "  x"]
    assert run(StringReplace, string="a.b.c", find=".", replace="-") == "a-b-c"  # literal, not a pattern


def test_contains_and_compare_with_case():
    assert run(StringContains, string="Hello", substring="ell", case_sensitive=True)
    assert not run(StringContains, string="Hello", substring="ELL", case_sensitive=True)
    assert run(StringContains, string="Hello", substring="ELL", case_sensitive=False)
    cases = [("Starts With", "Hello", "he", False, True), ("Starts With", "Hello", "he", True, False),
             ("Ends With", "Hello", "LO", False, True), ("Equal", "abc", "abc", True, True),
             ("Equal", "abc", "ABC", True, False), ("Equal", "abc", "ABC", False, True)]
    for mode, a, b, sensitive, expected in cases:
        assert run(StringCompare, string_a=a, string_b=b, mode=mode, case_sensitive=sensitive) is expected


def test_regex_match_follows_re_and_its_flags():
    text = "First line\nsecond Line"
    for pattern, ci, ml, da in [("^second", False, False, False), ("^second", False, True, False),
                                ("LINE$", True, False, False), ("line.second", False, False, True),
                                ("line.second", False, False, False), ("[unclosed", True, False, False)]:
        flags = (re.I if ci else 0) | (re.M if ml else 0) | (re.S if da else 0)
        try:
            expected = re.search(pattern, text, flags) is not None
        except re.error:
            expected = False  # ComfyUI: a malformed pattern matches nothing
        got = run(RegexMatch, string=text, regex_pattern=pattern, case_insensitive=ci, multiline=ml, dotall=da)
        assert got is expected, pattern


@pytest.mark.parametrize("pattern", [r"\d+", r"(\w)(\d)", r"([a-z]+)=(\d+)?", r"(x)?y"])
def test_regex_extract_modes_follow_comfyui(pattern):
    text = "a=1 b= c=33 y xy d2 9"
    args = dict(string=text, regex_pattern=pattern, case_insensitive=False, multiline=False, dotall=False)
    compiled = re.compile(pattern)
    first = compiled.search(text)
    assert run(RegexExtract, mode="First Match", group_index=1, **args) == (first.group(0) if first else "")
    found = compiled.findall(text)
    expected_all = "\n".join(m[0] if isinstance(m, tuple) else m for m in found)
    assert run(RegexExtract, mode="All Matches", group_index=1, **args) == expected_all
    for index in (0, 1, 2, 3):
        group = first.group(index) if first and compiled.groups >= index else ""
        assert run(RegexExtract, mode="First Group", group_index=index, **args) == (group or "")
        groups = [m.group(index) or "" for m in compiled.finditer(text) if m.groups() and compiled.groups >= index]
        assert run(RegexExtract, mode="All Groups", group_index=index, **args) == "\n".join(groups)
    assert run(RegexExtract, mode="All Matches", group_index=1, **{**args, "regex_pattern": "("}) == ""


def test_regex_replace_count_flags_and_errors():
    assert run(RegexReplace, string="Cat cat CAT", regex_pattern="cat", replace="dog") == "dog dog dog"
    assert run(RegexReplace, string="Cat cat CAT", regex_pattern="cat", replace="dog", case_insensitive=False,
               count=0) == "Cat dog CAT"
    assert run(RegexReplace, string="a1 b2 c3", regex_pattern=r"(\w)(\d)", replace=r"\2\1", count=2) == "1a 2b c3"
    with pytest.raises(ValueError, match="RegexReplace input 'regex_pattern'.*not a valid pattern"):
        run(RegexReplace, string="x", regex_pattern="(", replace="")
    with pytest.raises(ValueError, match="RegexReplace input 'replace'"):
        run(RegexReplace, string="x", regex_pattern="x", replace=r"\9")


@pytest.mark.parametrize("node, extra", [
    (RegexMatch, {}),
    (RegexExtract, {"mode": "All Matches", "group_index": 1}),
    (RegexExtract, {"mode": "All Groups", "group_index": 1}),
    (RegexReplace, {"replace": "x", "count": 0}),
])
def test_hostile_pattern_fails_fast_naming_the_input_and_limit(node, extra):
    pattern, text = HOSTILE
    start, start_cpu = time.monotonic(), time.thread_time()
    with pytest.raises(ValueError, match=rf"{node.__name__} input 'regex_pattern'.*longer than 0.5 s of CPU time"):
        node.execute(CTX, string=text, regex_pattern=pattern, case_insensitive=True, multiline=False, dotall=False,
                     **extra)
    assert time.thread_time() - start_cpu < 1.0 and time.monotonic() - start < 3.0


def test_primitives_pass_their_value_and_keep_comfyui_ranges():
    assert run(PrimitiveInt, value=-7) == -7 and run(PrimitiveFloat, value=2.5) == 2.5
    assert run(PrimitiveString, value="s") == "s" and run(PrimitiveStringMultiline, value="a\nb") == "a\nb"
    assert run(PrimitiveBoolean, value=True) is True
    spec = PrimitiveFloat.schema.input("value")
    assert (spec.min, spec.max, spec.step) == (-(2**63 - 1), 2**63 - 1, 0.1)
    assert PrimitiveInt.schema.input("value").control_after_generate


def test_preview_any_renders_values_like_comfyui():
    def shown(value):
        result = PreviewAny.execute(CTX, source=value)
        assert result.outputs == (result.ui["text"][0],)
        return result.ui["text"][0]

    assert shown("text") == "text" and shown(3) == "3" and shown(True) == "True" and shown(None) == "None"
    assert shown({"a": [1, 2]}) == json.dumps({"a": [1, 2]}, indent=4)
    long = torch.arange(2000)  # summarised: 6 items at each end (torch's default is 3)
    tensor_text = shown(long)
    assert tensor_text.replace(" ", "").startswith("tensor([0,1,2,3,4,5,...,1994,") and "1993" not in tensor_text
    assert "Latent(" in shown(Latent(torch.zeros(1, 4, 2, 2)))
    assert str(long).replace(" ", "").startswith("tensor([0,1,2,...,1997")  # print options restored afterwards
