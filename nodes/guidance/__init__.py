"""Controlled generation without training (issue #18): MODEL patches that steer sampling, one module per method.

Each node returns a new MODEL handle carrying one more patch (the maths lives in nodes/sd/), so it composes with
every sampler, LoRA, ControlNet and the other guidance patches.
"""

from __future__ import annotations

from . import attend_multidiffusion

FAMILY_MODULES = (attend_multidiffusion,)

NODES = tuple(node for module in FAMILY_MODULES for node in module.NODES)
