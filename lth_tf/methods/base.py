"""What a way of finding the ticket's mask is: the small protocol every method implements.

A method is one module holding one ``MaskFinder`` subclass instance, ``FINDER``, and one line
in ``lth_tf.methods.registry``. The experiment loop, the stage graph (and so Ray), the
checks of the flags, plots, reports and studies reach a method only through this protocol;
none of them compares a method's name.

A method sees the experiment through ``run``, the stage runner (lth_tf.experiment), of which
it may use: ``cfg``; ``out`` (the folder); ``model`` (the wrapped network), ``shape``,
``splits`` and ``strategy``; ``theta0(trial)``; ``trained(arm, trial, round)`` (a finished
stage's weights.npz), ``mask(arm, trial, round)`` (a stage's mask); ``targets(round)`` (how
many weights each group keeps: config.targets with this method's ``pooled``); ``ones()`` (the
dense mask).

Modules here import no TensorFlow at import time (the flags are checked before it loads):
they import lth_tf.saliency, Keras and the like inside their functions.
"""


class MaskFinder:
  """The defaults are iterative magnitude pruning's (IMP): ticket round r is pruned from the
  trained ticket of round r-1 (one-shot: of round 0), each layer at its own rate."""

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    if "label" not in cls.__dict__:  # a subclass names itself
      cls.label = cls.name

  name = None
  label = None  # in comparisons (plot --compare, report --compare); default: the name
  # True: the dense round records every later round's mask (dense_round_callback), so a
  # ticket's mask is retrained with the dense round, not with its own stage.
  masks_from_dense_round = False
  # True: layers pooled under one threshold at --prune_rate (config.groups), the output
  # layer apart unless --global_output_layer. False: each layer at its kind's rate.
  pooled = False
  # True: a mask is recomputed bit for bit (numpy) from the files it was found from, so the
  # controls built on it survive a retrained ticket (lth_tf.repair says which stages do not).
  exact = True
  # True: it prunes by magnitude and so can keep N of every M weights (--structure=N:M).
  structures = False
  # True: its layers take the densities of --distribution, erk unless given (dynamic sparse
  # training); False: --distribution is optional.
  needs_distribution = False
  # {flag: value}: what this method did for a flag added after folders of it were written,
  # where the flag's default now does otherwise; a flags.cfg without the flag reads as this.
  before_flags = {}
  # True: the ticket's mask changes while it trains (training_callback moves it), so the
  # early-stopping bookkeeping keeps the mask with the weights.
  masks_move = False

  def problems(self, cfg):
    """A one-line reason ``cfg`` cannot run with this method (naming the flag and the fix),
    or None. Checked before TensorFlow is imported."""
    del cfg
    return None

  def needs(self, cfg, trial, round_):
    """The ticket stages whose files the ticket's round ``round_`` > 0 mask is found from."""
    return [("ticket", trial, 0 if cfg.one_shot else round_ - 1)]

  def find(self, run, trial, round_):
    """The ticket's mask for ``round_`` > 0 of ``trial``."""
    raise NotImplementedError

  def search_iterations(self, run, trial, round_):
    """Training iterations spent finding the mask of ``round_`` > 0 (IMP: every training of
    the chain that led to it)."""
    cfg = run.cfg
    return cfg.iterations * (1 if cfg.one_shot else round_)

  def training_callback(self, run, arm, trial, round_):
    """A Keras callback for ``arm``'s stage at ``round_`` > 0 (called between compiled
    training blocks, e.g. to move the mask), or None. Its ``metrics()``, if it has one, is
    added to the stage's metrics.json; a stage with one is not checkpointed: it reruns whole."""
    del run, arm, trial, round_
    return None

  def dense_round_callback(self, run, trial):
    """A Keras callback for the dense round 0 of ``trial`` (e.g. to record masks while it
    trains), or None. A dense round with one is not checkpointed: it reruns whole."""
    del run, trial
    return None


class AtInit(MaskFinder):
  """Methods that score θ0 alone (pruning at initialization): a round's mask needs no trained
  stage, and the ticket trains from θ0 (no --one_shot, no --rewind)."""

  pooled = True  # SNIP, GraSP and SynFlow rank their scores globally, as in their papers
  exact = False  # scores come from TensorFlow

  def problems(self, cfg):
    return from_theta0_problem(self.name, cfg)

  def needs(self, cfg, trial, round_):
    return []

  def scoring_model(self, run, trial):
    """The network at θ0, unmasked, on one device: under a strategy, a plain copy (no
    replicas are needed to score)."""
    from lth_tf import models, ticket
    model = run.model if run.strategy is None else ticket.wrap(
        models.build(run.cfg.model, run.shape, init=run.cfg.initializer))
    ticket.set_masks(model, run.ones())
    ticket.set_weights(model, run.theta0(trial))
    return model


def from_theta0_problem(name, cfg):
  """Methods that find masks at or near θ0 (at initialization, early-bird) train them from
  θ0: the reason --one_shot or another --rewind cannot run with them, or None."""
  if cfg.one_shot or cfg.rewind != "init":
    return (f"--pruning={name} finds masks at or near θ0 and trains them from θ0; drop "
            f"--one_shot and --rewind")
  return None
