"""tb_gradstats: Gradient Health for Keras training, in TensorBoard.

The public API is imported lazily so that `import tb_gradstats.plugin` (what
TensorBoard does at start-up) never imports TensorFlow.

Example:

```python
import tb_gradstats
model.fit(x, y, callbacks=[tb_gradstats.GradientHealth("runs/exp1")])
```
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "GradientHealth": "tb_gradstats.callback",
    "GradientMonitor": "tb_gradstats.monitor",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tb_gradstats' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__():
    return __all__
