"""--structure=N:M: tickets that keep at most N of every M consecutive weights along each
kernel's input axis, in TF-MOT's sparsity_m_by_n layout."""
import numpy as np
import pytest
from conftest import TINY_ARGS, error_line, needs_fashion, run_cli
from lth_tf import artifacts, config, layout, masks, pruning


def _tfmot_mask(kernel, n, m):
  """TF-MOT's own N:M mask of ``kernel`` (its m_by_n counts zeros: (M - N, M))."""
  import tensorflow as tf
  from tensorflow_model_optimization.python.core.sparsity.keras import pruning_utils
  w = tf.constant(kernel)
  flat = pruning_utils.generate_m_by_n_mask(pruning_utils.weights_rearrange(w), (m - n, m))
  return pruning_utils.m_by_n_sparsity_mask_prepare(flat, w.shape).numpy()


@pytest.mark.parametrize("shape", [(16, 8), (3, 3, 8, 4), (784, 30)])
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8)])
def test_n_of_m_is_tfmots_mask(shape, n, m):
  """Wrong versions: groups along the output axis, or along the flattened kernel (row-major:
  for a Dense kernel that is the output axis too); keeping the smallest."""
  import tensorflow as tf
  from tensorflow_model_optimization.python.core.sparsity.keras import pruning_utils
  kernel = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  mask = pruning.n_of_m(np.abs(kernel), np.ones(shape), n, m)
  np.testing.assert_array_equal(mask, _tfmot_mask(kernel, n, m))
  assert pruning_utils.is_pruned_m_by_n(tf.constant(kernel * mask), (m - n, m), "C_OUT")
  assert mask.sum() == kernel.size * n // m


def test_n_of_m_never_keeps_what_the_previous_mask_removed():
  scores = np.arange(32, dtype=np.float32).reshape(8, 4)
  allowed = np.ones((8, 4), np.float32)
  allowed[7, :] = allowed[6, 0] = 0  # the largest scores of the second group are gone
  mask = pruning.n_of_m(scores, allowed, 2, 4)
  assert np.all(mask[allowed == 0] == 0)
  np.testing.assert_array_equal(mask[4:, 0], [1, 1, 0, 0])  # 6 removed: 5 and 4 kept
  np.testing.assert_array_equal(mask[4:, 1], [0, 1, 1, 0])


def test_a_layer_whose_input_axis_is_not_a_multiple_of_m_stays_dense():
  cfg = config.paper_config("conv2", structure="2:4", rounds=1)
  assert cfg.dense_under_structure() == ["conv1"]  # 3 input channels
  shapes = {n: s for n, (s, _) in cfg.kernel_shapes().items()}
  kinds = {n: k for n, (_, k) in cfg.kernel_shapes().items()}
  counts = dict((names[0], c) for names, c in config.targets(cfg, shapes, kinds, 1))
  assert counts["conv1"] == 3 * 3 * 3 * 64 and counts["conv2"] == 3 * 3 * 64 * 64 // 2
  assert pruning.n_of_m(np.ones((3, 3, 3, 64)), np.ones((3, 3, 3, 64)), 2, 4).all()


@pytest.mark.parametrize("structure,kept", [("2:4", 0.5), ("1:4", 0.25)])
def test_an_n_of_m_ticket_and_its_controls(structure, kept, tiny_config, splits, tmp_path):
  """Round 1 keeps the N largest-|w| of every M trained weights of the dense round, rewound
  to θ0; random_prune draws another N:M mask; pruned weights end training exactly zero."""
  from lth_tf import experiment
  n, m = map(int, structure.split(":"))
  cfg = tiny_config(rounds=1, iterations=40, structure=structure,
                    controls=("reinit", "random_prune"))
  out = str(tmp_path)
  experiment.run(cfg, out, splits)
  shapes = dict(cfg.kernel_shapes())
  dense = artifacts.read_weights(f"{layout.stage_dir(out, 'ticket', 0, 0)}/weights.npz")
  ticket = artifacts.read_mask(f"{layout.stage_dir(out, 'ticket', 0, 1)}/masks.npz")
  control = artifacts.read_mask(f"{layout.stage_dir(out, 'random_prune', 0, 1)}/masks.npz")
  for name, (shape, _) in shapes.items():
    assert shape[-2] % m == 0  # every LeNet layer is N:M-prunable
    np.testing.assert_array_equal(
        ticket[name], pruning.n_of_m(np.abs(dense[name][0]), np.ones(shape), n, m))
    for mask in (ticket[name], control[name]):
      groups = mask.reshape(shape[-2] // m, m, shape[-1]).sum(axis=1)
      assert np.all(groups == n)
    assert np.mean(ticket[name] == control[name]) < 0.9
  assert masks.fraction_remaining(ticket) == pytest.approx(kept)
  for arm in ("ticket", "reinit", "random_prune"):
    trained = artifacts.read_weights(f"{layout.stage_dir(out, arm, 0, 1)}/weights.npz")
    mask = ticket if arm != "random_prune" else control
    assert all(np.all(trained[n][0][mask[n] == 0] == 0) for n in mask)


@pytest.mark.parametrize("args,named", [
    (["--structure=4:4", "--rounds=1"], "--structure=4:4 keeps 4 of every 4 weights"),
    (["--structure=5:4", "--rounds=1"], "--structure=5:4"),
    (["--structure=2-4", "--rounds=1"], "--structure=2-4 is unknown"),
    (["--structure=2:4"], "pass --rounds=1"),
    (["--structure=2:4", "--rounds=1", "--pruning=snip"], "pass --pruning=layerwise"),
    (["--structure=2:4", "--rounds=1", "--pruning=global"], "pass --pruning=layerwise"),
    (["--structure=2:4", "--rounds=1", "--distribution=erk"], "--distribution=erk"),
])
def test_a_structure_that_cannot_run_is_refused_in_one_line(args, named, tmp_path):
  proc = run_cli(["--model=lenet300_100", *args, f"--output_dir={tmp_path}/x"])
  assert proc.returncode == 2 and named in error_line(proc), proc.stderr[-500:]
  assert not (tmp_path / "x").exists()


@needs_fashion
def test_the_command_line_says_once_which_layers_stay_dense(tmp_path):
  """3:7 on LeNet: fc1's 784 inputs are 112 groups of 7; fc2 (300) and output (100) are not
  multiples of 7, so they stay dense, and the run says so once."""
  proc = run_cli([*TINY_ARGS, "--structure=3:7", "--controls=", "--export=false", "--threads=1",
                  f"--output_dir={tmp_path}/x"])
  assert proc.returncode == 0, proc.stderr[-2000:]
  said = [l for l in proc.stderr.splitlines() if "stay dense" in l]
  assert len(said) == 1 and "fc2, output stay dense" in said[0], said
  mask = artifacts.read_mask(f"{layout.stage_dir(f'{tmp_path}/x', 'ticket', 0, 1)}/masks.npz")
  assert mask["fc2"].all() and mask["output"].all() and mask["fc1"].mean() == pytest.approx(3 / 7)
