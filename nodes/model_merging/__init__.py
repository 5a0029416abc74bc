"""Merging and saving models (ComfyUI's advanced/model_merging menu, and LoraSave)."""

from . import merge, save
from .merge import *  # noqa: F401,F403  (node classes, for tests and scripts)
from .save import *  # noqa: F401,F403

NODES = (*merge.NODES, *save.NODES)
