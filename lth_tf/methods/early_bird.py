"""Early-bird tickets (You et al. 2020): during the dense round, the magnitude mask of every
later round's sparsity is recomputed at each evaluation; a mask has settled when the masks of
the last --eb_window evaluations are all within --eb_epsilon of each other (--eb_distance:
1 − IoU of the kept weights by default; You et al.'s normalised Hamming distance, which cannot
exceed 0.1 below ~5% of weights kept, with --eb_distance=hamming), and is recorded then.
Rounds still unsettled at the end take the final magnitude mask. Each round's ticket then
trains its recorded mask from θ0."""
from lth_tf.methods import base


class EarlyBird(base.MaskFinder):
  name = "early_bird"
  exact = False  # masks come from the dense round's training
  masks_from_dense_round = True
  before_flags = {"eb_distance": "hamming"}  # the rule before --eb_distance (default jaccard)

  def problems(self, cfg):
    problem = base.from_theta0_problem(self.name, cfg)
    if problem:
      return problem
    evaluations = cfg.iterations // cfg.eval_every
    if cfg.eb_window > evaluations:
      return (f"--eb_window={cfg.eb_window} exceeds the {evaluations} evaluations of a round "
              f"(--iterations/--eval_every), so no mask could ever settle; pass at most "
              f"{evaluations}")
    return None

  def needs(self, cfg, trial, round_):
    return [("ticket", trial, 0)]  # the dense round records every round's mask

  def find(self, run, trial, round_):
    raise RuntimeError(f"no early-bird mask for round {round_}: the dense round records them")

  def search_iterations(self, run, trial, round_):
    from lth_tf import artifacts, layout
    path = layout.early_bird_path(run.out, trial)
    found = artifacts.read_json(path)
    if str(round_) not in found:
      raise artifacts.CorruptFileError(path, f"no iteration for round {round_}")
    return found[str(round_)]

  def dense_round_callback(self, run, trial):
    """One EarlyBird detector per later round's target sparsity; each round's mask is written
    (with the iteration it settled at) the moment it settles."""
    import tf_keras as keras

    from lth_tf import artifacts, layout, masks, pruning, saliency, ticket
    cfg = run.cfg
    found_path = layout.early_bird_path(run.out, trial)

    class EarlyBirdRecorder(keras.callbacks.Callback):
      def on_train_begin(self, logs=None):
        self.detectors = {r: saliency.EarlyBird(cfg.eb_epsilon, cfg.eb_window,
                                                   cfg.eb_distance)
                          for r in range(1, cfg.rounds + 1)}
        self.found = {}

      def _record(self, r, mask, iteration):
        artifacts.write_bytes(f"{layout.stage_dir(run.out, 'ticket', trial, r)}/masks.npz",
                              masks.to_bytes(mask))
        self.found[str(r)] = iteration
        artifacts.write_json(found_path, self.found)

      def _masks(self):
        kernels = ticket.get_kernels(self.model)
        ones = masks.ones_like(kernels)
        return {r: pruning.prune("magnitude", kernels, ones, run.targets(r))
                for r in self.detectors if str(r) not in self.found}

      def on_epoch_end(self, epoch, logs=None):
        ticket.apply_masks(self.model)
        for r, mask in self._masks().items():
          if self.detectors[r].update(mask):
            self._record(r, mask, logs["iteration"])

      def on_train_end(self, logs=None):
        ticket.apply_masks(self.model)
        for r, mask in self._masks().items():
          self._record(r, mask, cfg.iterations)

    return EarlyBirdRecorder()


FINDER = EarlyBird()
