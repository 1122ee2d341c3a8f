"""Shared test fixtures: the location of the real captures beside the checkout."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """Path of ``../shared/data``; the test is skipped when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real captures not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sim3d_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dataset root holding the synthetic category ``toy`` from :func:`make_sim3d_fixture`.

    Both training folders (real and synthetic), two nominal test instances (one
    with an all-nominal ground-truth file) and two anomalous ones; 4 views of
    48 x 64 pixels. Treat it as read-only: copy it before corrupting files.
    """
    from sim3d_datamodule.testing import make_sim3d_fixture

    root = tmp_path_factory.mktemp("sim3d")
    make_sim3d_fixture(root, category="toy")
    return root
