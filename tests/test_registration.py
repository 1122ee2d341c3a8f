"""Registration of the project's classes with anomalib: the start-up hook and the real CLI."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from anomalib_modmap import registration

REPO_ROOT = Path(__file__).resolve().parents[1]

CHILD_ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def _run_python(code: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=CHILD_ENV, capture_output=True, text=True, timeout=timeout, check=False)


def test_hook_registers_after_anomalib_import(sim3d_root):
    result = _run_python(
        f"""
        import sys
        from anomalib_modmap import _startup_hook
        _startup_hook.install()
        assert "anomalib" not in sys.modules
        from anomalib.data import get_datamodule
        import anomalib.data
        print(anomalib.data.SiM3D.__module__)
        for class_path in ("SiM3D", "sim3d_datamodule.SiM3D"):
            datamodule = get_datamodule({{"class_path": class_path, "init_args": {{"root": {str(sim3d_root)!r}, "category": "toy", "image_size": 32}}}})
            print(type(datamodule).__name__, datamodule.image_size)
        import anomalib.models
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "anomalib-modmap" not in result.stderr
    lines = result.stdout.split()
    assert lines[0] == "sim3d_datamodule.datamodule"
    assert lines[1:] == ["SiM3D", "32", "SiM3D", "32"]


def test_register_models_allows_module(monkeypatch):
    import anomalib.models

    monkeypatch.setattr(registration, "MODELS", {"Padim": "anomalib.models.image.padim", "Missing": "anomalib_modmap.no_such_module"})
    monkeypatch.setattr(anomalib.models, "ALLOWED_MODULES", set(anomalib.models.ALLOWED_MODULES))
    assert registration.register_models() == ["Padim"]
    assert "anomalib.models.image.padim" in anomalib.models.ALLOWED_MODULES
    assert not hasattr(anomalib.models, "Missing")


def test_register_datamodules_sets_attribute():
    import anomalib.data

    from sim3d_datamodule.datamodule import SiM3D

    assert registration.register_datamodules() == ["SiM3D"]
    assert anomalib.data.SiM3D is SiM3D
    assert "SiM3D" in anomalib.data.__all__


@pytest.fixture
def installed_hook():
    """Fail early and clearly when the package was not installed with pip (the hook comes with the install)."""
    result = _run_python("import importlib.util; print(importlib.util.find_spec('_anomalib_modmap_hook') is not None)")
    if result.stdout.strip() != "True":
        pytest.fail("The start-up hook is not installed; run `pip install -e .` (scripts/install.sh) first.")
    if shutil.which("anomalib") is None:
        pytest.fail("The anomalib console script is not on PATH; install anomalib.")


def test_plain_python_skips_anomalib(installed_hook):
    result = _run_python("import sys; print('_anomalib_modmap_hook' in sys.modules, any(name.startswith('anomalib') for name in sys.modules))")
    assert result.stdout.split() == ["True", "False"]


@pytest.mark.parametrize("data", ["SiM3D", "sim3d_datamodule.SiM3D"])
def test_anomalib_cli_resolves_sim3d(installed_hook, sim3d_root, data):
    command = ["anomalib", "fit", "--print_config", "--model", "Padim", "--data", data, "--data.root", str(sim3d_root), "--data.category", "toy", "--data.image_size", "32"]
    result = subprocess.run(command, env=CHILD_ENV, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"class_path: sim3d_datamodule(\.datamodule)?\.SiM3D\n", result.stdout), result.stdout[-3000:]
    assert "image_size: 32" in result.stdout


@pytest.mark.parametrize(
    ("first", "then", "check"),
    [
        ("import anomalib_modmap.models", "import anomalib.models as target", "target.Modmap.__name__ == 'Modmap'"),
        ("import sim3d_datamodule.datamodule", "import anomalib.data as target", "target.SiM3D.__name__ == 'SiM3D'"),
        ("import anomalib.models", "import anomalib_modmap.models; import anomalib.models as target", "'anomalib_modmap.models' in target.ALLOWED_MODULES"),
    ],
)
def test_hook_registers_in_any_import_order(first, then, check):
    """A project module that imports anomalib part-way through its own import is registered once it finishes."""
    result = _run_python(
        f"""
        import warnings
        warnings.simplefilter("error", UserWarning)
        from anomalib_modmap import _startup_hook
        _startup_hook.install()
        {first}
        {then}
        print({check})
        """,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "True"
