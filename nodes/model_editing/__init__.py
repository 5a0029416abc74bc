"""Model editing (our "advanced/model_editing" menu): nodes that return a MODEL with edited weights, leaving the
base as it is. The maths lives in nodes/sd/model_editing.py."""

from .time_edit import TextToImageModelEdit

NODES = (TextToImageModelEdit,)

__all__ = ["NODES", "TextToImageModelEdit"]
