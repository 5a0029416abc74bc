"""Models shipped with the node library (the embedded default model lives in `embedded/`)."""
