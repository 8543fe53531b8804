"""SNIP (Lee et al. 2019): keep the weights of largest connection sensitivity |g ⊙ w| at θ0,
on --score_batches batches of training data."""
from lth_tf.methods import base


class Snip(base.AtInit):
  name = "snip"

  def problems(self, cfg):
    from lth_tf import data
    problem = super().problems(cfg)
    if problem:
      return problem
    train = data.TRAIN_SIZES[cfg.dataset] - data.VALIDATION_SIZE
    if cfg.score_batches * cfg.batch_size > train:
      return (f"--score_batches={cfg.score_batches} of --batch_size={cfg.batch_size} scores "
              f"more examples than the training split holds ({train:,}); pass at most "
              f"{train // cfg.batch_size}")
    return None

  def scores(self, model, x, y, cfg):
    from lth_tf import saliency
    return saliency.snip_scores(model, x, y, batches=cfg.score_batches,
                                batch_size=cfg.batch_size)

  def find(self, run, trial, round_):
    from lth_tf import data, layout, masks, pruning
    cfg = run.cfg
    model = self.scoring_model(run, trial)
    rows = data.batch_indices(len(run.splits.train_x), cfg.batch_size, cfg.score_batches,
                              layout.score_seed(cfg, trial)).ravel()
    scores = self.scores(model, run.splits.train_x[rows], run.splits.train_y[rows], cfg)
    return pruning.keep_top(scores, masks.ones_like(scores), run.targets(round_))

  def search_iterations(self, run, trial, round_):
    return run.cfg.score_batches  # batches of data scored


FINDER = Snip()
