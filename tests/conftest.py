import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ppadapt  # noqa: E402,F401  (applies the CPU settings before anything imports paddle)

SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar-10-mini-python.tar.gz"


def shared_cifar10_or_skip() -> Path:
    """The real CIFAR-10 subset: skipped on a user's clone, required on CI."""
    import pytest

    if SHARED_CIFAR10.is_file():
        return SHARED_CIFAR10
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {SHARED_CIFAR10} is missing")
    pytest.skip(f"{SHARED_CIFAR10} not present (only on the project's machines)")
