"""Every way of finding a ticket's mask, by the name --pruning takes. A new method is one
module in lth_tf/methods holding a ``FINDER`` (see base.MaskFinder) plus one line here."""
from lth_tf.methods import (early_bird, global_magnitude, grasp, layerwise, rigl, set_evolution,
                            snip, static, synflow)

METHODS = {m.FINDER.name: m.FINDER for m in (
    layerwise,
    global_magnitude,
    snip,
    grasp,
    synflow,
    early_bird,
    static,
    set_evolution,
    rigl,
)}
ALIASES = {"imp": "layerwise"}  # the paper's name for it


def get(name):
  """The MaskFinder registered as ``name``."""
  if name not in METHODS:
    raise ValueError(f"unknown pruning method {name!r}; choose one of {', '.join(METHODS)}")
  return METHODS[name]
