"""Training and evaluation of nodegraph's embedded default model (a tiny SD1-layout shapes model).

Not part of the installed package: it is run from a checkout (`scripts/train_embedded_model.py`,
`scripts/evaluate_embedded_model.py`). Stages: `pipeline` (VAE, latent cache, UNet + text encoder),
`run` (budget and export), `evaluate` / `classifier` / `fid` (measurement). See
nodes/models/embedded/MODEL_CARD.md for the settings and results.
"""
