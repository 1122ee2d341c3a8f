"""Build hooks: ship the start-up hook that registers the project's classes with anomalib.

Besides the packages, every wheel (regular or editable) carries two top-level
files for site-packages: ``_anomalib_modmap_hook.py``, a copy of
``anomalib_modmap/_startup_hook.py``, and ``anomalib_modmap_hook.pth``, which
Python runs at start-up to install the hook. Everything else lives in
pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HOOK_SOURCE = Path(__file__).parent / "anomalib_modmap" / "_startup_hook.py"
HOOK_MODULE = "_anomalib_modmap_hook"
PTH_FILE = "anomalib_modmap_hook.pth"


def write_hook_files(target: Path) -> list[str]:
    """Write the hook module and its ``.pth`` file into ``target``; return their paths."""
    target.mkdir(parents=True, exist_ok=True)
    module = target / f"{HOOK_MODULE}.py"
    module.write_text(HOOK_SOURCE.read_text(encoding="utf-8"), encoding="utf-8")
    pth = target / PTH_FILE
    pth.write_text(f"import {HOOK_MODULE}; {HOOK_MODULE}.install()\n", encoding="utf-8")
    return [str(module), str(pth)]


class BuildPyWithHook(build_py):
    """``build_py`` that adds the hook files to the root of a regular wheel."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            write_hook_files(Path(self.build_lib))


class EditableWheelWithHook(editable_wheel):
    """``editable_wheel`` that adds the hook files to the root of the editable wheel."""

    def _install_namespaces(self, installation_dir, pth_prefix) -> None:  # noqa: ANN001
        super()._install_namespaces(installation_dir, pth_prefix)
        write_hook_files(Path(installation_dir))


setup(cmdclass={"build_py": BuildPyWithHook, "editable_wheel": EditableWheelWithHook})
