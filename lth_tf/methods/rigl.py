"""RigL (--pruning=rigl; Evci et al. 2020): every --dst_interval iterations each layer drops
its active weights of smallest magnitude and grows as many where the dense gradient is
largest, the fraction decaying with a cosine from --dst_fraction to zero at --dst_end of the
training. The gradient is the loss's on one batch of --batch_size training examples drawn for
that update, taken with respect to every kernel entry, pruned ones included (TF-MOT's wrapper
masks by assignment, so the kernel variable itself is what the forward pass multiplies)."""
from lth_tf import dynamic
from lth_tf.methods import dynamic as base


class RigL(base.Dynamic):
  name = "rigl"
  label = "RigL"
  masks_move = True
  fraction_rule = staticmethod(dynamic.cosine_fraction)

  def grow_scores(self, run, model, kernels, rng, iteration):
    from lth_tf import saliency
    pick = rng.choice(len(run.splits.train_x), run.cfg.batch_size, replace=False)
    grads = saliency.dense_gradients(model, run.splits.train_x[pick], run.splits.train_y[pick])
    return {n: abs(g) for n, g in grads.items()}


FINDER = RigL()
