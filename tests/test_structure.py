"""--structure=N:M: tickets that keep at most N of every M consecutive weights along each
kernel's input axis, in TF-MOT's sparsity_m_by_n layout."""
import numpy as np
import pytest
from conftest import TINY_ARGS, assert_refused, needs_fashion, run_cli
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
  assert_refused(args, named, tmp_path)


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


# ---- --structure=unit -------------------------------------------------------------------------

def test_unit_masks_keep_whole_units_by_the_norm_of_their_incoming_weights():
  """A 4-3-2 chain whose hidden layer keeps 2 of its 3 units. Column norms 5, 3 and 4 (sums of
  |w| 7, 6 and 4): units 0 and 2 by norm; a sum of |w| would keep unit 1. The output layer
  loses no unit, but the rows of the removed hidden unit. A unit the previous mask removed
  never comes back, whatever its norm."""
  hidden = np.array([[3, 1.5, 0], [4, 1.5, 4], [0, 1.5, 0], [0, 1.5, 0]], np.float32)
  out = np.ones((3, 2), np.float32)
  ones = {"h": np.ones((4, 3), np.float32), "out": np.ones((3, 2), np.float32)}
  got = pruning.unit_masks({"h": np.abs(hidden), "out": out}, ones, {"h": 2})
  np.testing.assert_array_equal(got["h"], np.tile([1, 0, 1], (4, 1)))
  np.testing.assert_array_equal(got["out"], [[1, 1], [0, 0], [1, 1]])
  previous = {"h": np.tile([1, 1, 0], (4, 1)).astype(np.float32), "out": ones["out"]}
  got = pruning.unit_masks({"h": np.abs(hidden), "out": out}, previous, {"h": 2})
  np.testing.assert_array_equal(got["h"][0], [1, 1, 0])


def test_a_removed_filter_reaches_nothing_through_the_flattened_map():
  """Conv-2 on 28x28: remove conv2's filter 5 by unit_masks; changing its bias (or its
  incoming weights) leaves the network's output unchanged, so its rows in fc1 (channels
  last: row r is filter r mod 64) are the ones removed. Wrong version: channels-first rows."""
  import tensorflow as tf
  from lth_tf import models, ticket
  model = ticket.wrap(models.build("conv2", (28, 28, 1), seed=3))
  kernels = ticket.get_kernels(model)
  units = {n: k.shape[-1] for n, k in kernels.items() if n != "output"}
  units["conv2"] = 63
  scores = {n: np.abs(k) for n, k in kernels.items()}
  scores["conv2"][..., 5] = 0  # the weakest filter
  mask = pruning.unit_masks(scores, {n: np.ones(k.shape, np.float32) for n, k in kernels.items()},
                            units)
  assert mask["conv2"][..., 5].sum() == 0 and mask["conv2"].sum() == 3 * 3 * 64 * 63
  assert mask["fc1"].reshape(14, 14, 64, 256)[:, :, 5].sum() == 0
  assert mask["fc1"].sum() == 14 * 14 * 63 * 256
  ticket.set_masks(model, mask)
  x = tf.constant(np.random.default_rng(0).integers(0, 255, (8, 28, 28, 1)).astype(np.uint8))
  before = model(x, training=False).numpy()
  conv2 = ticket.weight_layers(model)["conv2"]
  conv2.bias.assign(conv2.bias + 5.0 * tf.one_hot(5, 64))
  np.testing.assert_allclose(model(x, training=False).numpy(), before, rtol=0, atol=0)
  conv2.bias.assign(conv2.bias + 5.0 * tf.one_hot(6, 64))  # a kept filter does matter
  assert not np.allclose(model(x, training=False).numpy(), before)


def test_a_unit_ticket_and_its_controls(tiny_config, splits, tmp_path):
  """Rounds 1 and 2 keep the units of largest norm of the previous round's trained weights,
  nested; random_prune keeps as many units, others; pruned units have no weights in or out."""
  from lth_tf import experiment
  cfg = tiny_config(rounds=2, iterations=40, structure="unit",
                    controls=("reinit", "random_prune"))
  out = str(tmp_path)
  experiment.run(cfg, out, splits)
  stage = lambda arm, r, f: f"{layout.stage_dir(out, arm, 0, r)}/{f}"  # noqa: E731
  previous = artifacts.read_mask(stage("ticket", 0, "masks.npz"))
  for r in (1, 2):
    ticket = artifacts.read_mask(stage("ticket", r, "masks.npz"))
    control = artifacts.read_mask(stage("random_prune", r, "masks.npz"))
    trained = artifacts.read_weights(stage("ticket", r - 1, "weights.npz"))
    want = pruning.unit_masks({n: np.abs(trained[n][0]) for n in ticket}, previous,
                              cfg.unit_counts(r))
    assert all(np.array_equal(ticket[n], want[n]) for n in ticket)
    for mask in (ticket, control):
      kept = {n: mask[n].any(axis=0) for n in mask}
      assert {n: int(kept[n].sum()) for n in ("fc1", "fc2")} == cfg.unit_counts(r)
      np.testing.assert_array_equal(mask["fc2"], np.outer(kept["fc1"], kept["fc2"]))
      np.testing.assert_array_equal(mask["output"], np.outer(kept["fc2"], np.ones(10)))
    assert not np.array_equal(ticket["fc1"], control["fc1"])
    assert np.all(ticket["fc1"] <= previous["fc1"])
    previous = ticket


@pytest.mark.parametrize("args,named", [
    (["--structure=unit", "--model=resnet20", "--pruning=layerwise"], "plain chain"),
    (["--structure=unit", "--pruning=synflow"], "pass --pruning=layerwise"),
    (["--structure=unit", "--distribution=erk"], "drop --distribution=erk"),
    (["--structure=unit", "--rounds=30"], "(100 units at rate 0.2 per round)"),
])
def test_a_unit_structure_that_cannot_run_is_refused_in_one_line(args, named, tmp_path):
  assert_refused(args, named, tmp_path)
