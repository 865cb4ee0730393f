"""Old import paths of modules that moved, kept working with a :class:`DeprecationWarning`.

The language-model job moved from the top of the package into :mod:`bigsoftmax.lm`, the two-tower model
into :mod:`bigsoftmax.recsys.model`, the private kernels ``_full``/``_lse`` into :mod:`bigsoftmax.ops.lse`
(``linear_logsumexp`` there returns ``(lse, target_logit)``; ``chunk=`` is ``chunk_size=``) and
``_streaming`` into :mod:`bigsoftmax.samplers.streaming`. ``import bigsoftmax.registry`` (and every submodule of a moved
package, e.g. ``bigsoftmax.data.corpus``) returns the *same* module object as its new path, so classes and
module state are never duplicated. The finder only answers for the names in :data:`MOVED`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

#: old dotted name (or package prefix) -> new dotted name
MOVED = {
    "bigsoftmax.train": "bigsoftmax.lm.train",
    "bigsoftmax.eval": "bigsoftmax.lm.eval",
    "bigsoftmax.bench": "bigsoftmax.lm.bench",
    "bigsoftmax.registry": "bigsoftmax.lm.registry",
    "bigsoftmax.data": "bigsoftmax.lm.data",
    "bigsoftmax.models": "bigsoftmax.lm.models",
    "bigsoftmax.models.lm": "bigsoftmax.lm.models",
    "bigsoftmax.models.twotower": "bigsoftmax.recsys.model",
    # private modules that earlier docs imported: the kernels moved into ops/, the estimator into samplers/
    "bigsoftmax._full": "bigsoftmax.ops.lse",
    "bigsoftmax._lse": "bigsoftmax.ops.lse",
    "bigsoftmax._streaming": "bigsoftmax.samplers.streaming",
}


def _target(name: str):
    if name in MOVED:
        return MOVED[name]
    prefix = "bigsoftmax.data."  # submodules of the one moved package: bigsoftmax.data.corpus
    if name.startswith(prefix):
        return "bigsoftmax.lm.data." + name[len(prefix):]
    return None


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {self.new}; import it from there", DeprecationWarning, stacklevel=2)
        return importlib.import_module(self.new)

    def exec_module(self, module) -> None:  # the target module is already executed
        pass


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = _target(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new), is_package=True)


def install() -> None:
    """Put the alias finder first on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
