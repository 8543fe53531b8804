"""GraSP (Wang et al. 2020): keep the weights whose removal least reduces the gradient flow
at θ0 (scores -w ⊙ Hg), on --score_batches batches of training data."""
from lth_tf.methods import snip


class Grasp(snip.Snip):
  name = "grasp"

  def scores(self, model, x, y, cfg):
    from lth_tf import saliency
    return saliency.grasp_scores(model, x, y, batches=cfg.score_batches,
                                 batch_size=cfg.batch_size)


FINDER = Grasp()
