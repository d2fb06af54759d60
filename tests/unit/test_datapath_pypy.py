"""The datapath runs under PyPy (Python 3.9 on Debian 12) as well as CPython: everything it
imports must be valid there.  Import errors would otherwise surface only as "the datapath
exited at start" in the integration tests of the PyPy datapath."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import vnet

PYPY = shutil.which("pypy3")
ROOT = Path(vnet.__file__).resolve().parents[1]


@pytest.mark.skipif(PYPY is None, reason="needs pypy3 (.ci/install installs it)")
def test_the_datapath_imports_under_pypy() -> None:
    assert PYPY is not None
    done = subprocess.run([PYPY, "-c", "import vnet.datapath.main"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
