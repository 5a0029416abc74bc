import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests' helper modules (fake_nodes, tiny_models)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: nothing here may reach a hub


@pytest.fixture(autouse=True)
def _clear_fake_calls():
    import fake_nodes

    fake_nodes.CALLS.clear()
    yield
