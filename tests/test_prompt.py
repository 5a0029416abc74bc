"""Prompt weighting parsed as ComfyUI parses it."""

from __future__ import annotations

import pytest

from nodes.sd.prompt import PromptPart, parse_prompt


def pairs(text: str) -> list[tuple[str, float]]:
    return [(part.text, round(part.weight, 6)) for part in parse_prompt(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("", []),
        ("a (cat)", [("a ", 1.0), ("cat", 1.1)]),
        ("a ((cat))", [("a ", 1.0), ("cat", 1.21)]),
        ("(((cat)))", [("cat", 1.331)]),
        ("a (cat:1.3) on a mat", [("a ", 1.0), ("cat", 1.3), (" on a mat", 1.0)]),
        ("(a (cat) mat:0.5)", [("a ", 0.5), ("cat", 0.55), (" mat", 0.5)]),
        # An explicit weight replaces the enclosing one (ComfyUI), it does not multiply (A1111).
        ("((cat:1.5))", [("cat", 1.5)]),
        ("(cat:-0.5)", [("cat", -0.5)]),
        ("(cat: 2)", [("cat", 2.0)]),
        ("(cat:abc)", [("cat:abc", 1.1)]),
        ("(ratio 16:9)", [("ratio 16", 9.0)]),  # ComfyUI reads any trailing number as the weight
        ("(:1.2)", [(":1.2", 1.1)]),
        ("[cat]", [("[cat]", 1.0)]),
        ("a \\(cat\\)", [("a (cat)", 1.0)]),
        ("(smile \\(happy\\):1.2)", [("smile (happy)", 1.2)]),
        ("a (cat", [("a (cat", 1.0)]),
        ("a (b (c) d", [("a (b (c) d", 1.0)]),
        ("a cat)", [("a cat)", 1.0)]),
        ("()", []),
    ],
)
def test_weights(text: str, expected: list[tuple[str, float]]) -> None:
    assert pairs(text) == expected


def test_embedding_references_become_parts() -> None:
    assert parse_prompt("a embedding:my_style, cat") == [
        PromptPart("a ", 1.0),
        PromptPart("embedding:my_style", 1.0, "my_style"),
        PromptPart(", cat", 1.0),
    ]
    assert parse_prompt("(embedding:neg:1.2) x") == [
        PromptPart("embedding:neg", 1.2, "neg"),
        PromptPart(" x", 1.0),
    ]
    assert parse_prompt("embedding:v2/sub.pt") == [PromptPart("embedding:v2/sub.pt", 1.0, "v2/sub.pt")]


def test_prefix_inside_a_word_is_text() -> None:
    assert parse_prompt("myembedding:x") == [PromptPart("myembedding:x", 1.0)]
