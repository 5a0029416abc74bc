"""Compatibility name: the image nodes moved to the `nodes.image` package; `from nodes.images import X` still
works for code written before the move (node registration uses `nodes.image`)."""

from .image import *  # noqa: F401,F403  (re-exports nodes.image.__all__)
