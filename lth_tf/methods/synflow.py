"""SynFlow (Tanaka et al. 2020): data-free, --synflow_iterations rounds of pruning by synaptic
flow |w ⊙ dR/dw| at θ0 towards the round's sparsity."""
from lth_tf.methods import base


class SynFlow(base.AtInit):
  name = "synflow"

  def find(self, run, trial, round_):
    from lth_tf import saliency
    return saliency.synflow_masks(self.scoring_model(run, trial), run.targets(round_),
                                  run.cfg.synflow_iterations)

  def search_iterations(self, run, trial, round_):
    return 0  # no data, no training


FINDER = SynFlow()
