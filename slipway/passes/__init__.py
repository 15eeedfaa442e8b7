"""Graph optimization passes (one pass per file) and the :class:`PassManager` that runs them.

Every module in this package that defines a pass registers it with ``@register``; importing the
package imports them all, so :data:`PASSES` maps every pass name to its class.
"""

from __future__ import annotations

import pkgutil
from importlib import import_module

from slipway.passes.base import PASSES, Pass, PassResult, RulesPass, register

__all__ = ["PASSES", "Pass", "PassResult", "RulesPass", "register"]

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("base", "manager") and not _info.name.startswith("_"):
        import_module(f"{__name__}.{_info.name}")
