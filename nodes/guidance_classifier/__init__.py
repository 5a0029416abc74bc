"""Classifier guidance (Dhariwal & Nichol 2021): a noise-aware latent classifier loader and the guidance patch.
The maths and the file format live in nodes/sd/noisy_classifier.py."""

from .nodes import ClassifierGuidance, NoisyClassifierLoader

NODES = (NoisyClassifierLoader, ClassifierGuidance)

__all__ = ["ClassifierGuidance", "NODES", "NoisyClassifierLoader"]
