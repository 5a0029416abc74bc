"""Stable Diffusion internals used by the node library: payload types, loading, text, sampling."""
