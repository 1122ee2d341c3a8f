"""Make the project's datamodules and models visible to anomalib under their short names.

anomalib 2.7 resolves names in three places:

- its CLI (jsonargparse) accepts ``--data SiM3D`` or ``--model Modmap`` for
  any imported subclass of ``AnomalibDataModule`` or ``AnomalibModule``;
- ``anomalib.data.get_datamodule`` looks the last part of ``class_path`` up as
  an attribute of ``anomalib.data``;
- ``anomalib.models.get_model`` looks a bare name up as an attribute of
  ``anomalib.models`` and imports a dotted one only from ``ALLOWED_MODULES``.

:func:`on_module_loaded` covers all three. The start-up hook installed with the
package calls it when those anomalib modules finish importing, so users import
nothing themselves. Calling :func:`register` by hand does the same.
"""

from __future__ import annotations

import logging
import sys
import warnings
from importlib import import_module

logger = logging.getLogger(__name__)

# Short name -> module that defines or re-exports it.
DATAMODULES: dict[str, str] = {"SiM3D": "sim3d_datamodule.datamodule"}
# Models are registered only when their module imports: a model added later needs one line here.
MODELS: dict[str, str] = {"Modmap": "anomalib_modmap.models", "CfmSim3d": "anomalib_modmap.models"}

# Modules whose code has run to the end. Python still marks a module as
# importing while the start-up hook runs right after its last line.
_EXECUTED: set[str] = set()


def _load(name: str, module_path: str) -> type | None:
    """Import ``module_path`` and return its attribute ``name``; ``None`` when the module does not exist yet."""
    try:
        module = import_module(module_path)
    except ModuleNotFoundError as error:
        if error.name is not None and module_path.startswith(error.name):
            logger.debug("Skipping %s: module %s is not available.", name, module_path)
            return None
        raise
    if module_path not in _EXECUTED and _is_initializing(module):
        # The project module is importing anomalib right now; the hook registers
        # the class once that module finishes.
        logger.debug("Deferring %s: module %s is still importing.", name, module_path)
        return None
    if not hasattr(module, name):
        warnings.warn(f"anomalib-modmap: module {module_path} has no class {name}; it is not registered with anomalib.", stacklevel=3)
        return None
    return getattr(module, name)


def _is_initializing(module: object) -> bool:
    """Return whether ``module`` is part-way through its first import."""
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _loaded(module_name: str) -> bool:
    """Return whether ``module_name`` has finished importing in this process."""
    module = sys.modules.get(module_name)
    return module is not None and (module_name in _EXECUTED or not _is_initializing(module))


def _export(module: object, name: str, cls: type) -> None:
    setattr(module, name, cls)
    exported = getattr(module, "__all__", None)
    if isinstance(exported, list) and name not in exported:
        exported.append(name)


def register_datamodules() -> list[str]:
    """Set the project's datamodules as attributes of ``anomalib.data``; return the names registered."""
    data_module = import_module("anomalib.data")
    registered = []
    for name, module_path in DATAMODULES.items():
        cls = _load(name, module_path)
        if cls is not None:
            _export(data_module, name, cls)
            registered.append(name)
    return registered


def register_models() -> list[str]:
    """Set the importable project models as attributes of ``anomalib.models`` and allow their modules."""
    models_module = import_module("anomalib.models")
    registered = []
    for name, module_path in MODELS.items():
        cls = _load(name, module_path)
        if cls is None:
            continue
        _export(models_module, name, cls)
        models_module.ALLOWED_MODULES.update({module_path, cls.__module__})
        registered.append(name)
    return registered


def register() -> list[str]:
    """Register every datamodule and model with anomalib; return the names registered."""
    return register_datamodules() + register_models()


def on_module_loaded(module_name: str) -> None:
    """Register what ``module_name`` needs once it has finished importing.

    ``anomalib.data``, ``anomalib.models`` and ``anomalib.cli`` register the
    project's classes into themselves. The project's own
    ``sim3d_datamodule.datamodule`` and ``anomalib_modmap.models`` register
    their classes into whichever of those anomalib modules is already loaded.

    Errors are turned into warnings, because an exception here would break
    the import of anomalib itself.
    """
    _EXECUTED.add(module_name)
    try:
        if module_name == "anomalib.data":
            register_datamodules()
        elif module_name == "anomalib.models":
            register_models()
        elif module_name == "anomalib.cli":
            register_datamodules()
            if _loaded("anomalib.models"):
                register_models()
        elif module_name in DATAMODULES.values() and _loaded("anomalib.data"):
            register_datamodules()
        elif module_name in MODELS.values() and _loaded("anomalib.models"):
            register_models()
    except Exception as error:  # noqa: BLE001 - must not break anomalib's import
        warnings.warn(f"anomalib-modmap could not register its classes with anomalib after importing {module_name}: {error!r}", stacklevel=2)
