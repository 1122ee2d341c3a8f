"""Start-up import hook that registers anomalib-modmap's classes with anomalib.

``pip install`` copies this file to site-packages as the top-level module
``_anomalib_modmap_hook`` and adds ``anomalib_modmap_hook.pth``, which Python
runs at start-up. The hook only watches the import system: once
``anomalib.data``, ``anomalib.models`` or ``anomalib.cli`` has finished
importing, it calls :func:`anomalib_modmap.registration.on_module_loaded`,
which makes short names such as ``SiM3D`` visible to anomalib. The project's
own ``sim3d_datamodule.datamodule`` and ``anomalib_modmap.models`` trigger it
too, for processes that import them before anomalib. A process that
never imports anomalib pays for one small module and one set lookup per import.
"""

from __future__ import annotations

import sys

# anomalib's modules that resolve short names, and the project's modules that
# define the classes: whichever side finishes importing last triggers registration.
TRIGGER_MODULES = frozenset(
    {"anomalib.data", "anomalib.models", "anomalib.cli", "sim3d_datamodule.datamodule", "anomalib_modmap.models"},
)


class _RegisteringLoader:
    """Wrap a module loader so that registration runs right after the module executes."""

    def __init__(self, loader: object) -> None:
        self._loader = loader

    def create_module(self, spec: object) -> object:
        return self._loader.create_module(spec)

    def exec_module(self, module: object) -> None:
        # Restore the real loader first so that anomalib gets an ordinary module.
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        # The import system binds the submodule to its parent package only after
        # this method returns; bind it now so that registration can reach it.
        parent, _, child = module.__name__.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)
        _register(module.__name__)

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)


class AnomalibModmapFinder:
    """Meta-path finder that lets the other finders locate a trigger module, then wraps its loader.

    Finders marked with ``is_anomalib_modmap_finder`` are skipped during the
    search, so two copies of this hook (the installed one and one imported
    from a checkout) never call each other.
    """

    is_anomalib_modmap_finder = True

    @classmethod
    def find_spec(cls, fullname: str, path: object = None, target: object = None) -> object:
        if fullname not in TRIGGER_MODULES:
            return None
        for finder in sys.meta_path:
            if getattr(finder, "is_anomalib_modmap_finder", False) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def _register(module_name: str) -> None:
    try:
        from anomalib_modmap.registration import on_module_loaded
    except ImportError as error:
        import warnings

        warnings.warn(
            f"anomalib-modmap's start-up hook could not import anomalib_modmap ({error}); its classes are not "
            "registered with anomalib. Reinstall the package or remove anomalib_modmap_hook.pth from site-packages.",
            stacklevel=2,
        )
        return
    on_module_loaded(module_name)


def install() -> None:
    """Put the finder first on ``sys.meta_path`` unless a copy is there, and register for trigger modules already imported."""
    if not any(getattr(finder, "is_anomalib_modmap_finder", False) for finder in sys.meta_path):
        sys.meta_path.insert(0, AnomalibModmapFinder)
    for name in sorted(TRIGGER_MODULES & set(sys.modules)):
        _register(name)
