import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "10M" in item.nodeid:
            item.add_marker(pytest.mark.heavy)
