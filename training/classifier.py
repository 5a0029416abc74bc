"""The analytic shapes classifier now lives in nodes/sd/shapes_classifier.py (the conditional-accuracy metric node
uses it and nodes/ never imports training/); this module re-exports it so training code and tests keep working."""

from nodes.sd.shapes_classifier import (  # noqa: F401  (re-exported)
    ANGLE_BINS,
    CIRCLE_HARMONIC,
    CORE_EROSION,
    FOREGROUND_DISTANCE,
    HOLE_FRACTION,
    MIN_AREA_FRACTION,
    Classification,
    _as_array,
    _nearest_bin,
    border_band,
    classify,
    eroded,
    foreground_mask,
    largest_component,
    nearest_colour,
    radial_profile,
    shape_from_mask,
)
