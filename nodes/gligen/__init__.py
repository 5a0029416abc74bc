"""GLIGEN (ComfyUI's loaders / conditioning/gligen menu entries): the loader and the text-box conditioning.
The maths and the file reading live in nodes/sd/gligen.py."""

from .textbox import GLIGENLoader, GLIGENTextBoxApply

NODES = (GLIGENLoader, GLIGENTextBoxApply)

__all__ = ["GLIGENLoader", "GLIGENTextBoxApply", "NODES"]
