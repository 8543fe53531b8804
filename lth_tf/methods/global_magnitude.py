"""Iterative magnitude pruning with one threshold across layers (--pruning=global, the
follow-up papers' choice for VGG and ResNet): the pooled layers keep their largest-|w|
survivors together at --prune_rate per round; the output layer keeps its own rate unless
--global_output_layer."""
from lth_tf.methods import layerwise


class GlobalMagnitude(layerwise.Layerwise):
  name = "global"
  label = "IMP (global)"
  pooled = True
  structures = False  # one threshold across layers, not groups of M

  def problems(self, cfg):
    if cfg.distribution:
      return (f"--pruning=global ranks the pooled layers under one threshold; "
              f"--distribution={cfg.distribution} sets each layer's density: drop one of them "
              f"(--pruning=layerwise --distribution={cfg.distribution} is IMP at those densities)")
    return super().problems(cfg)


FINDER = GlobalMagnitude()
