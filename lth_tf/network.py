"""An experiment's network as its Config describes it: θ0 drawn from a seed, the shapes its
weight files hold, how many weights each group of layers keeps after a round, and the
trainer with the Config's optimizer and schedule.

Why its own module: the experiment loop, the studies and the benchmarks all need the same
network the same way (a study redraws a lost θ0 bit for bit), without the loop itself.
"""
import functools

from lth_tf import artifacts, config, data, distribute, models, ticket
from lth_tf.methods import registry as method_registry


def initial_weights(cfg, seed, shape=None):
  """The weights ``cfg``'s initializer draws with ``seed`` (θ0 of a trial, or a reinit
  control's fresh weights): a pure function of the two, so a lost theta0.npz is redrawn
  bit for bit. ``shape``: the images' shape (default: the dataset's)."""
  return ticket.get_weights(models.build(cfg.model, shape or data.SHAPES[cfg.dataset],
                                         init=cfg.initializer, seed=seed,
                                         init_scale=cfg.init_scale))


@functools.lru_cache(maxsize=None)
def _weight_shapes(model, shape):
  net = models.build(model, shape)
  return artifacts.weight_shapes({n: layer.weights
                                  for n, layer in ticket.weight_layers(net).items()})


def weight_shapes(cfg):
  """{layer: [array shapes]} of ``cfg``'s network, what its θ0 and weights.npz must hold
  (built once per model and dataset)."""
  return _weight_shapes(cfg.model, data.SHAPES[cfg.dataset])


def round_targets(cfg, model, round_):
  """How many weights each group of ``model``'s prunable layers keeps after ``round_`` rounds:
  [((layer, ...), count)], the targets pruning.prune takes (config.groups says which groups)."""
  wrappers = ticket.wrappers(model)
  shapes = {n: tuple(int(d) for d in w.pruning_vars[0][0].shape)  # no copy of the values
            for n, w in wrappers.items()}
  return config.targets(cfg, shapes, {n: models.layer_kind(w.layer) for n, w in wrappers.items()},
                        round_)


def make_trainer(cfg, model, jit_compile=True, strategy=None):
  """A trainer for ``model`` with ``cfg``'s optimizer, schedule and weight decay: a
  training.Trainer, or under a tf.distribute ``strategy`` a distribute.DistributedTrainer."""
  moving = method_registry.get(cfg.pruning).masks_move  # early stopping keeps the mask with the weights
  return distribute.trainer(
      strategy, model, cfg.learning_rate, jit_compile, optimizer=cfg.optimizer,
      momentum=cfg.momentum,
      warmup_iterations=cfg.warmup_iterations, lr_drops=cfg.lr_drops,
      lr_drop_factor=cfg.lr_drop_factor, weight_decay=cfg.weight_decay,
      extra_state=[w.pruning_vars[0][1] for w in ticket.wrappers(model).values()] if moving
      else ())
