"""spandrel, imported with or without torchvision (only its LaMa and RestoreFormer use it).

spandrel's registry imports every architecture at import time, and two of them import
torchvision at module level. Where torchvision cannot be imported (no wheel matches the CPU
torch on the project's machines), a stand-in that refuses every call is on `sys.modules` while
spandrel imports, and removed afterwards: the ESRGAN family, SwinIR, ... never touch it, and a
LaMa or RestoreFormer file is refused by the loader (`NEEDS_TORCHVISION`).
"""

from __future__ import annotations

import enum
import importlib
import sys
import threading
from types import ModuleType
from typing import Any

NEEDS_TORCHVISION = frozenset({"LaMa", "RestoreFormer"})
_STAND_INS = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
_lock = threading.Lock()
_state: dict[str, Any] = {}


class InterpolationMode(enum.Enum):
    """The names torchvision's rotate takes (the stand-in's, never used to compute)."""

    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


def _refuse(*_: Any, **__: Any) -> Any:
    raise RuntimeError("this spandrel architecture needs torchvision, which cannot be imported")


def torchvision_works() -> bool:
    """Whether torchvision imports here (a CUDA build beside a CPU torch does not)."""
    try:
        importlib.import_module("torchvision")
    except Exception:  # noqa: BLE001 - ImportError, or RuntimeError from a mismatched build
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]  # what a failed import left behind
        return False
    return True


def _stand_ins() -> dict[str, ModuleType]:
    """Modules named as torchvision's that spandrel's imports find: every function refuses."""
    top, transforms, functional = (ModuleType(name) for name in _STAND_INS)
    functional.__dict__.update(normalize=_refuse, rotate=_refuse)
    functional.__dict__["InterpolationMode"] = InterpolationMode
    transforms.__dict__["functional"] = functional
    top.__dict__["transforms"] = transforms
    return dict(zip(_STAND_INS, (top, transforms, functional), strict=True))


def spandrel() -> ModuleType:
    """The spandrel module, imported once (on first use: it takes a second)."""
    with _lock:
        if "module" not in _state:
            _state["torchvision"] = torchvision_works()
            if _state["torchvision"]:
                _state["module"] = importlib.import_module("spandrel")
            else:
                sys.modules.update(_stand_ins())
                try:
                    _state["module"] = importlib.import_module("spandrel")
                finally:
                    for name in _STAND_INS:
                        sys.modules.pop(name, None)
        return _state["module"]


def usable(arch_id: str) -> bool:
    """Whether models of a spandrel architecture can run here."""
    spandrel()
    return bool(_state["torchvision"]) or arch_id not in NEEDS_TORCHVISION
