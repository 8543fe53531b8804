"""Dynamic sparse training: --pruning=static, set, rigl (lth_tf/dynamic.py, lth_tf/methods)."""
import math

import numpy as np
import pytest
import tf_keras as keras
from conftest import assert_refused
from lth_tf import artifacts, config, distributions, dynamic, layout, masks


def test_drop_and_grow_moves_the_smallest_to_the_highest_scores_and_keeps_the_count():
  """Wrong versions: dropping by signed value; growing among the active; growing only outside
  the just-dropped (RigL's code lets a dropped weight grow back)."""
  kernel = np.array([[0.5, -0.1, 0.0, 0.0], [2.0, 0.3, 0.0, -0.05]], np.float32)
  mask = np.array([[1, 1, 0, 0], [1, 1, 0, 1]], np.float32)  # 5 active
  scores = np.array([[9, 9, 1, 3], [9, 0, 2, 8]], np.float32)
  new, moved = dynamic.drop_and_grow(kernel, mask, scores, 0.4)  # k = round(0.4 * 5) = 2
  # dropped: -0.05 (flat 7) and -0.1 (flat 1); grown among inactive after the drop:
  # flat 1 (score 9, just dropped), flat 7 (8, just dropped) -> nothing moves
  np.testing.assert_array_equal(new, mask)
  assert moved == 0
  scores[0, 3] = 10  # now flat 3 outranks the dropped flat 1 and 7 (9 and 8)
  new, moved = dynamic.drop_and_grow(kernel, mask, scores, 0.4)
  assert new.sum() == mask.sum() and moved == 1
  np.testing.assert_array_equal(new, [[1, 1, 0, 1], [1, 1, 0, 0]])


def test_a_full_or_empty_layer_cannot_move():
  ones = np.ones((4, 3), np.float32)
  new, moved = dynamic.drop_and_grow(np.ones((4, 3)), ones, np.ones((4, 3)), 0.3)
  assert moved == 0 and np.array_equal(new, ones)
  zeros = np.zeros((4, 3), np.float32)
  new, moved = dynamic.drop_and_grow(np.ones((4, 3)), zeros, np.ones((4, 3)), 0.3)
  assert moved == 0 and np.array_equal(new, zeros)


def test_rigls_fraction_decays_with_a_cosine_and_sets_fraction_is_constant():
  """At a quarter of T_end a cosine is at 0.854 of the start (a linear decay would be at
  0.75); zero from T_end on."""
  f = lambda t: dynamic.cosine_fraction(0.3, t, 1000, 0.8)  # noqa: E731
  assert f(0) == pytest.approx(0.3)
  assert f(200) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
  assert f(400) == pytest.approx(0.15)
  assert f(800) == 0 and f(900) == 0
  assert dynamic.constant_fraction(0.3, 900, 1000, 0.8) == 0.3


class _Recorder(keras.callbacks.Callback):
  """Each block's end: the masks, and whether every pruned kernel entry is zero once the
  wrapper has masked it (what the next forward pass computes with)."""

  def on_train_begin(self, logs=None):
    self.masks, self.iterations = [], []

  def on_epoch_end(self, epoch, logs=None):
    from lth_tf import ticket
    self.masks.append(ticket.get_masks(self.model))
    self.iterations.append(logs["iteration"])


@pytest.fixture(scope="module")
def dst_runs(tmp_path_factory, splits, tiny_config):
  from lth_tf import experiment
  runs = {}
  for method in ("static", "set", "rigl"):
    cfg = tiny_config(pruning=method, distribution="erk", prune_rate=0.6, rounds=2,
                      iterations=200, eval_every=20, dst_interval=40,
                      controls=("random_prune",))
    out = str(tmp_path_factory.mktemp(method))
    recorder = _Recorder()
    rows = experiment.run(cfg, out, splits, callbacks=[recorder])
    runs[method] = (cfg, out, rows, recorder)
  return runs


def _stage_masks(recorder, cfg, round_):
  """The masks recorded during the ticket's stage of ``round_`` (stages run in order)."""
  per_stage = cfg.iterations // cfg.eval_every
  order = [s for s in cfg.stages()]
  i = order.index(("ticket", 0, round_))
  return (recorder.iterations[i * per_stage:(i + 1) * per_stage],
          recorder.masks[i * per_stage:(i + 1) * per_stage])


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_moving_masks_keep_each_layers_count_and_move_only_at_updates(dst_runs, method):
  cfg, out, _, recorder = dst_runs[method]
  shapes = {n: s for n, (s, _) in cfg.kernel_shapes().items()}
  for r in (1, 2):
    want = distributions.counts("erk", shapes, 0.4 ** r)
    metrics = artifacts.read_json(f"{layout.stage_dir(out, 'ticket', 0, r)}/metrics.json")
    updates = metrics["mask_updates"]
    assert [u["iteration"] for u in updates if u["fraction"] > 0] == [
        u["iteration"] for u in updates]
    assert {u["iteration"] for u in updates} <= set(range(40, 200, 40))
    assert sum(u["moved"]["fc1"] for u in updates) > 0  # connections do move
    assert all(u["moved"]["output"] == 0 for u in updates)  # erk keeps it dense
    its, seen = _stage_masks(recorder, cfg, r)
    start = artifacts.read_mask(f"{layout.stage_dir(out, 'ticket', 0, r)}/masks.npz")
    final = artifacts.read_mask(f"{layout.stage_dir(out, 'ticket', 0, r)}/final_masks.npz")
    moved_at = {u["iteration"] for u in updates if sum(u["moved"].values())}
    previous = start
    for it, mask in zip(its, seen):  # the recorder sees a block's end before its update
      assert {n: c for n, (c, _) in masks.counts(mask).items()} == want
      changed = any(np.any(mask[n] != previous[n]) for n in mask)
      assert changed == (it - cfg.eval_every in moved_at), it
      previous = mask
    assert {n: c for n, (c, _) in masks.counts(final).items()} == want
    weights = artifacts.read_weights(f"{layout.stage_dir(out, 'ticket', 0, r)}/weights.npz")
    assert all(np.all(weights[n][0][final[n] == 0] == 0) for n in final)
    assert any(np.any(final[n] != start[n]) for n in final)
    assert metrics["search_iterations"] == cfg.iterations


def test_static_keeps_its_random_start_mask_and_costs_no_search(dst_runs):
  cfg, out, rows, recorder = dst_runs["static"]
  for r in (1, 2):
    metrics = artifacts.read_json(f"{layout.stage_dir(out, 'ticket', 0, r)}/metrics.json")
    assert "mask_updates" not in metrics and metrics["search_iterations"] == 0
    start = artifacts.read_mask(f"{layout.stage_dir(out, 'ticket', 0, r)}/masks.npz")
    _, seen = _stage_masks(recorder, cfg, r)
    assert all(np.array_equal(m[n], start[n]) for m in seen for n in m)


def test_every_method_starts_from_the_same_random_mask_and_theta0(dst_runs):
  """static, set and rigl differ only in moving: same seed, same start (a fair comparison)."""
  starts = [artifacts.read_mask(f"{layout.stage_dir(out, 'ticket', 0, 2)}/masks.npz")
            for _, out, _, _ in dst_runs.values()]
  for other in starts[1:]:
    assert all(np.array_equal(starts[0][n], other[n]) for n in other)


def test_the_early_stop_state_holds_the_mask_it_was_evaluated_with(tiny_config):
  """The early-stopping bookkeeping snapshots the masks of a method whose masks move (else the
  early-stop accuracy would be that of the best weights under the final mask)."""
  from lth_tf import models, network, ticket
  for method, moving in (("rigl", True), ("static", False), ("layerwise", False)):
    cfg = tiny_config(pruning=method, distribution="erk" if method != "layerwise" else "",
                      prune_rate=0.6 if method != "layerwise" else 0.2, dst_interval=40)
    model = ticket.wrap(models.build(cfg.model, (28, 28, 1)))
    state = {id(v) for v in network.make_trainer(cfg, model, jit_compile=False).state_variables}
    mask_vars = [w.pruning_vars[0][1] for w in ticket.wrappers(model).values()]
    assert all((id(v) in state) == moving for v in mask_vars), method


@pytest.mark.parametrize("args,named", [
    (["--pruning=rigl", "--dst_fraction=0"], "--dst_fraction=0.0 is outside (0, 1)"),
    (["--pruning=rigl", "--dst_fraction=1"], "--dst_fraction"),
    (["--pruning=set", "--dst_end=0"], "--dst_end"),
    (["--pruning=set", "--dst_interval=150"], "--dst_interval=150 must be a multiple"),
    (["--pruning=set", "--dst_interval=0"], "--dst_interval"),
    (["--pruning=rigl", "--one_shot"], "drop --one_shot"),
    (["--pruning=static", "--rewind=iteration", "--rewind_iteration=100"], "--rewind"),
    (["--pruning=rigl", "--structure=2:4", "--rounds=1"], "--pruning=layerwise"),
])
def test_a_dynamic_method_that_cannot_run_is_refused_in_one_line(args, named, tmp_path):
  assert_refused(args, named, tmp_path)


def test_dynamic_methods_default_to_erk():
  assert config.paper_config("lenet300_100", pruning="rigl").distribution == "erk"
  assert config.paper_config("lenet300_100", pruning="set", distribution="uniform"
                             ).distribution == "uniform"
  assert config.paper_config("lenet300_100").distribution == ""


def test_rigl_grows_by_the_dense_gradient_pruned_entries_included(tiny_config, splits):
  """saliency.dense_gradients equals the gradient of an unwrapped copy holding the masked
  weights, at every kernel entry (wrong version: the wrapped variable's gradient times the
  mask, zero where RigL must look)."""
  import tensorflow as tf
  from lth_tf import models, ticket
  from lth_tf.saliency import dense_gradients
  model = ticket.wrap(models.build("lenet300_100", (28, 28, 1), seed=1))
  rng = np.random.default_rng(0)
  mask = {n: (rng.random(k.shape) < 0.3).astype(np.float32)
          for n, k in ticket.get_kernels(model).items()}
  ticket.set_masks(model, mask)
  x, y = splits.train_x[:60], splits.train_y[:60]
  got = dense_gradients(model, x, y)
  plain = models.build("lenet300_100", (28, 28, 1))
  for name, layer in ticket.weight_layers(plain).items():
    for var, value in zip(layer.weights, ticket.get_weights(model)[name]):
      var.assign(value)
  kernels = {n: ticket.weight_layers(plain)[n].kernel for n in mask}
  with tf.GradientTape() as tape:
    logits = plain(tf.cast(x, plain.inputs[0].dtype), training=False)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(y, tf.int64), logits=logits))
  want = tape.gradient(loss, kernels)
  for n in mask:
    np.testing.assert_allclose(got[n], want[n].numpy(), rtol=1e-5, atol=1e-7)
    assert np.abs(got[n][mask[n] == 0]).sum() > 0


def test_a_grown_weight_starts_at_zero_and_a_dropped_one_is_zeroed_at_once(tiny_config, splits):
  """The optimizer sees the dense gradient of pruned weights (TF-MOT masks by assignment), so
  between forward passes a pruned kernel entry can hold a value. An update must zero what it
  grows (wrong version: regrown weights keep that stale value) and what it drops."""
  import contextlib
  import types
  from lth_tf import models, ticket
  from lth_tf.methods import registry
  cfg = tiny_config(pruning="set", distribution="erk", prune_rate=0.6, iterations=200,
                    eval_every=20, dst_interval=40)
  model = ticket.wrap(models.build(cfg.model, (28, 28, 1), seed=2))
  rng = np.random.default_rng(0)
  mask = {n: (rng.random(k.shape) < 0.4).astype(np.float32)
          for n, k in ticket.get_kernels(model).items()}
  ticket.set_masks(model, mask)
  for name, w in ticket.wrappers(model).items():  # what an optimizer step leaves behind
    w.pruning_vars[0][0].assign(w.pruning_vars[0][0] + 0.5 * (1 - mask[name]))
  run = types.SimpleNamespace(cfg=cfg, out="unused", splits=splits,
                              scope=contextlib.nullcontext)
  mover = registry.get("set").training_callback(run, "ticket", 0, 1)
  mover.set_model(model)
  mover.on_train_begin()
  mover.on_epoch_end(1, {"iteration": 40})
  new, kernels = ticket.get_masks(model), ticket.get_kernels(model)
  grown = {n: (new[n] > 0) & (mask[n] == 0) for n in new}
  dropped = {n: (new[n] == 0) & (mask[n] > 0) for n in new}
  assert sum(g.sum() for g in grown.values()) > 0 and sum(d.sum() for d in dropped.values()) > 0
  for n in new:
    assert np.all(kernels[n][grown[n]] == 0) and np.all(kernels[n][new[n] == 0] == 0)
    assert new[n].sum() == mask[n].sum()


def test_the_linear_time_selection_is_a_stable_sorts_first_k():
  """dynamic._lowest replaces a stable argsort for speed; it must keep the same set, ties to
  the lower index (wrong version: np.argpartition alone, whose ties fall anywhere)."""
  rng = np.random.default_rng(0)
  for _ in range(300):
    values = rng.integers(0, 4, 40).astype(np.float64)
    k = int(rng.integers(0, 41))
    assert set(dynamic._lowest(values, k).tolist()) == set(
        np.argsort(values, kind="stable")[:k].tolist())
