"""The layout's rules (.ci/layout.py): imports in tinybert/ point one way (kernels → layers → models →
generation → api → front ends) and pyproject.toml lists every package, so wheels hold all of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_imports_point_one_way_and_every_package_ships():
    done = subprocess.run([sys.executable, str(ROOT / ".ci" / "layout.py")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
