"""L2 flavors: model families (scikit-learn, XGBoost, PyTorch) behind one small Protocol.

Heavy libraries load lazily: `FLAVORS` maps a name to "module:Class" and `get_flavor`
imports on first use, so `import mlbox` never imports torch or xgboost.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from mlbox.errors import UsageError

if TYPE_CHECKING:
    from mlbox.flavors.base import Flavor

FLAVORS: dict[str, str] = {
    "sklearn": "mlbox.flavors.sklearn:SklearnFlavor",
    "xgboost": "mlbox.flavors.xgboost:XGBoostFlavor",
    "torch": "mlbox.flavors.torch:TorchFlavor",
}


def get_flavor(name: str) -> Flavor:
    """The flavor called `name`; a UsageError listing the known ones otherwise."""
    if name not in FLAVORS:
        raise UsageError(f"unknown flavor {name!r}", hint=f"flavors are {', '.join(sorted(FLAVORS))}")
    module, _, cls = FLAVORS[name].partition(":")
    flavor: Flavor = getattr(importlib.import_module(module), cls)()
    return flavor
