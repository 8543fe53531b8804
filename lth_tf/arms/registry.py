"""The experiment's arms by name: the ticket, and the controls --controls names. A new control
is one module in lth_tf/arms holding an ``ARM`` (see base.Arm) plus one line here."""
from lth_tf.arms import random_prune, reinit, shuffled, sign_constant, ticket

ARMS = {m.ARM.name: m.ARM for m in (
    ticket,
    reinit,
    random_prune,
    sign_constant,
    shuffled,
)}
CONTROLS = tuple(name for name in ARMS if name != "ticket")


def get(name):
  """The Arm registered as ``name``."""
  if name not in ARMS:
    raise ValueError(f"unknown arm {name!r}; choose one of {', '.join(ARMS)}")
  return ARMS[name]
