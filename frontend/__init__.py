"""The browser editor: plain JavaScript ES modules served as they are (this package only carries the files)."""

from pathlib import Path

STATIC_DIR = Path(__file__).parent
