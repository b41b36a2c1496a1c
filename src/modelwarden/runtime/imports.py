"""``import tensorflow`` without the optional packages Keras pulls in that a worker never uses.

``import tensorflow`` eagerly imports Keras 3 (``keras.src.optimizers``), and Keras imports
scikit-learn (its ``SKLearnClassifier`` wrappers), pandas (DataFrame inputs to ``fit``) and,
through TensorFlow's legacy Keras engine, ``scipy.sparse`` - each behind ``try: import ...
except ImportError``.  A worker only loads and calls a model: it never wraps a model in a
scikit-learn estimator, feeds a DataFrame or a SciPy sparse matrix.  Measured on the 2-vCPU
host (bench/README.md, "one-shot run"): ~1 s of a ~3.3 s ``import tensorflow``.

While :func:`tensorflow_without_optional_extras` imports TensorFlow those packages look
absent, so Keras takes its own "not installed" branch; afterwards they import normally again
(model code that really imports SciPy still can).  Nothing numeric changes: the same
TensorFlow kernels, the same oneDNN setting, the same Keras.
"""

from __future__ import annotations

import sys
from typing import Any

DEFERRED = ("sklearn", "pandas", "scipy")


class _Absent:
    """A ``sys.meta_path`` finder that makes ``names`` (and their submodules) unimportable."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = frozenset(names)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (deferred while TensorFlow imports)", name=name)
        return None


def tensorflow_without_optional_extras(names: tuple[str, ...] = DEFERRED) -> Any:
    """``import tensorflow`` with ``names`` absent meanwhile (unless already imported); the module."""
    finder = _Absent(tuple(n for n in names if n not in sys.modules))
    sys.meta_path.insert(0, finder)
    try:
        import tensorflow as tf
    finally:
        sys.meta_path.remove(finder)
    return tf
