"""bench/ is a top-level folder of the repository, not an installed
package: put the repository on sys.path for these tests.

This folder has no __init__.py on purpose: as a package it would be
imported under the name ``bench`` and hide the real one.
"""

import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[2])
if REPO not in sys.path:
    sys.path.insert(0, REPO)
