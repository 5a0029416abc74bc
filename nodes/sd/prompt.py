"""Prompt weighting syntax, parsed the way ComfyUI parses it, so shared workflows mean the same thing here.

- `(text)` multiplies the weight by 1.1; nesting multiplies again: `((text))` is 1.21.
- `(text:1.3)` sets the weight to 1.3. As in ComfyUI (and unlike A1111) an explicit weight replaces the
  enclosing weight instead of multiplying it: `((text:1.5))` is 1.5.
- `\\(` and `\\)` are literal parentheses; an unmatched `(` or `)` is literal text too.
- `[text]` is plain text: ComfyUI gives square brackets no meaning.
- `embedding:name` (a whitespace-delimited word; trailing commas are not part of the name) refers to a
  textual-inversion embedding; it becomes its own part so the encoder can insert its vectors.

The parser is pure: text in, parts out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PAREN_WEIGHT = 1.1
EMBEDDING_PREFIX = "embedding:"
_EMBEDDING = re.compile(re.escape(EMBEDDING_PREFIX) + r"([^\s,]+)")
_ESCAPED_OPEN = "\x00("
_ESCAPED_CLOSE = "\x00)"


@dataclass(frozen=True)
class PromptPart:
    """A run of prompt text with one weight, or (when `embedding` is set) one embedding reference."""

    text: str
    weight: float = 1.0
    embedding: str | None = None


def _protect_escapes(text: str) -> str:
    return text.replace("\\(", _ESCAPED_OPEN).replace("\\)", _ESCAPED_CLOSE)


def _restore_escapes(text: str) -> str:
    return text.replace(_ESCAPED_OPEN, "(").replace(_ESCAPED_CLOSE, ")")


def _top_level_groups(text: str) -> list[str]:
    """Split into plain runs and balanced `( ... )` groups; escaped parentheses never count."""
    groups: list[str] = []
    start = 0
    depth = 0
    for i, char in enumerate(text):
        escaped = i > 0 and text[i - 1] == "\x00"
        if char == "(" and not escaped:
            if depth == 0:
                if i > start:
                    groups.append(text[start:i])
                start = i
            depth += 1
        elif char == ")" and not escaped and depth > 0:
            depth -= 1
            if depth == 0:
                groups.append(text[start : i + 1])
                start = i + 1
    if start < len(text):
        # The rest, including an unclosed "(" and all after it: ComfyUI keeps that as text.
        groups.append(text[start:])
    return groups


def _parse(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for group in _top_level_groups(text):
        if len(group) >= 2 and group[0] == "(" and group[-1] == ")":
            inner = group[1:-1]
            inner_weight = weight * PAREN_WEIGHT
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    inner_weight = float(inner[colon + 1 :])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out.extend(_parse(inner, inner_weight))
        else:
            out.append((group, weight))
    return out


def _split_embeddings(text: str, weight: float) -> list[PromptPart]:
    parts: list[PromptPart] = []
    position = 0
    for match in _EMBEDDING.finditer(text):
        # Only a word that starts with the prefix is a reference ("myembedding:x" is text).
        if match.start() > 0 and not text[match.start() - 1].isspace():
            continue
        if match.start() > position:
            parts.append(PromptPart(text[position : match.start()], weight))
        parts.append(PromptPart(match.group(0), weight, embedding=match.group(1)))
        position = match.end()
    if position < len(text):
        parts.append(PromptPart(text[position:], weight))
    return parts


def parse_prompt(text: str) -> list[PromptPart]:
    """Parse weights, escapes and embedding references.

    Args:
        text: the prompt as typed.

    Returns:
        Parts in prompt order; adjacent text at equal weight is merged, empty text dropped.
    """
    parts: list[PromptPart] = []
    for chunk, weight in _parse(_protect_escapes(text), 1.0):
        for part in _split_embeddings(_restore_escapes(chunk), weight):
            previous = parts[-1] if parts else None
            if (
                previous is not None
                and part.embedding is None
                and previous.embedding is None
                and previous.weight == part.weight
            ):
                parts[-1] = PromptPart(previous.text + part.text, part.weight)
            elif part.text:
                parts.append(part)
    return parts
