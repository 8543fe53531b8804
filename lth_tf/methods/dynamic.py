"""Dynamic sparse training (--pruning=static|set|rigl): round r trains ONE network from θ0 at
round r's sparsity, its layers at the densities of --distribution (default erk), starting from
a random mask; no IMP chain. ``Dynamic`` is the shared protocol; static, set and rigl differ
only in whether and where connections grow (lth_tf.dynamic holds the rules).

Updates happen every --dst_interval iterations between compiled training blocks (a Keras
callback at a block's end, so --dst_interval is a multiple of --eval_every), never per step.
Each update is recorded per layer in metrics.json (``mask_updates``); the stage's masks.npz is
the mask it started from (a pure function of the seed) and ``final_masks.npz`` the one its
trained weights hold. A stage with moving masks is not checkpointed: it reruns whole. The
early-stopping bookkeeping keeps the mask with the weights (network.make_trainer).
"""
from lth_tf.methods import base


class Dynamic(base.MaskFinder):
  exact = False  # the start mask is numpy, but the moves follow training
  needs_distribution = True  # --distribution defaults to erk (config.with_paper_defaults)
  masks_move = False
  fraction_rule = None  # lth_tf.dynamic.constant_fraction or cosine_fraction

  def problems(self, cfg):
    problem = base.from_theta0_problem(self.name, cfg)
    if problem:
      return problem
    if not cfg.distribution:
      return (f"--pruning={self.name} trains at round r's overall density split by "
              f"--distribution; pass --distribution=erk (or uniform, er)")
    if cfg.dst_interval % cfg.eval_every:
      return (f"--dst_interval={cfg.dst_interval} must be a multiple of --eval_every="
              f"{cfg.eval_every}: masks move between compiled training blocks")
    return None

  def needs(self, cfg, trial, round_):
    return []  # θ0 and a seed: every stage draws or loads θ0 itself

  def find(self, run, trial, round_):
    """A random mask at round ``round_``'s per-layer counts (the distribution's)."""
    import numpy as np

    from lth_tf import layout, pruning
    rng = np.random.default_rng(layout.dst_seed(run.cfg, trial, round_))
    return pruning.prune("random", run.ones(), None, run.targets(round_), rng)

  def search_iterations(self, run, trial, round_):
    return run.cfg.iterations if self.masks_move else 0

  def grow_scores(self, run, model, kernels, rng, iteration):
    """{layer: growth score} at an update (higher grows first)."""
    raise NotImplementedError

  def training_callback(self, run, arm, trial, round_):
    if arm != "ticket" or not self.masks_move:
      return None
    return _Mover(self, run, trial, round_)


def _Mover(method, run, trial, round_):
  """The Keras callback that moves the ticket's connections at the end of every block whose
  iteration is a multiple of --dst_interval (not the last: a move then would leave grown
  weights untrained), and records each update."""
  import numpy as np
  import tf_keras as keras

  from lth_tf import artifacts, dynamic, layout, masks, ticket
  cfg = run.cfg

  class Mover(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
      self.updates = []

    def on_epoch_end(self, epoch, logs=None):
      iteration = logs["iteration"]
      if iteration % cfg.dst_interval or iteration >= cfg.iterations:
        return
      fraction = method.fraction_rule(cfg.dst_fraction, iteration, cfg.iterations, cfg.dst_end)
      if fraction <= 0:
        return
      rng = np.random.default_rng(layout.dst_seed(cfg, trial, round_, iteration))
      ticket.apply_masks(self.model)
      kernels, mask = ticket.get_kernels(self.model), ticket.get_masks(self.model)
      scores = method.grow_scores(run, self.model, kernels, rng, iteration)
      new, moved = {}, {}
      for name in kernels:
        new[name], moved[name] = dynamic.drop_and_grow(kernels[name], mask[name], scores[name],
                                                       fraction)
      with run.scope():
        ticket.set_masks(self.model, new)
      self.updates.append(dict(iteration=iteration, fraction=fraction, moved=moved))

    def on_train_end(self, logs=None):
      ticket.apply_masks(self.model)
      artifacts.write_bytes(
          f"{layout.stage_dir(run.out, 'ticket', trial, round_)}/final_masks.npz",
          masks.to_bytes(ticket.get_masks(self.model)))

    def metrics(self):
      """What the stage adds to its metrics.json."""
      return dict(mask_updates=self.updates)

  return Mover()
