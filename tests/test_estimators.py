"""Information-plane estimators (lth_tf.study.estimators) against answers known in closed form."""
import numpy as np
import pytest

from lth_tf.study import estimators as E


@pytest.mark.parametrize("d,noise", [(2, 0.3), (2, 1.0), (3, 1.0), (3, 3.0)])
def test_pairwise_bounds_bracket_the_gaussian_channel(d, noise):
  """X ~ N(0, I_d), T = AX, Z ~ N(0, σ²I): I(X;T+Z) = ½ log2 det(I + AAᵀ/σ²). With 2,000
  samples the Bhattacharyya bound is below it and the KL bound above it (measured: lower
  0.62–0.87 and upper 1.29–1.72 times the truth in these four cases; 0.52–0.90 and 1.23–2.00
  over 60 random A, so the 0.4× and 2× margins hold these fixed seeds with room). Wrong: σ for
  σ² (at σ = 0.3 or 3 the bracket misses), or the 2σ² and 8σ² scales swapped (upper below the
  truth)."""
  rng = np.random.default_rng(d)
  a = rng.normal(size=(d, d))
  t = rng.normal(size=(2000, d)) @ a.T
  truth = E.gaussian_channel_information(a, np.eye(d), noise ** 2)
  y = np.zeros(2000)
  lower = E.pairwise_information(t, y, noise ** 2, "lower")[0]
  upper = E.pairwise_information(t, y, noise ** 2, "upper")[0]
  assert 0.4 * truth < lower < truth < upper < 2.0 * truth, (lower, truth, upper)


def clusters(n_per=100, k=10, separation=100.0, seed=0):
  """k tight clusters far apart relative to σ = 1: T+Z tells the cluster and nothing more."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(k, 5)) * separation
  y = np.repeat(np.arange(k), n_per)
  return centres[y] + rng.normal(size=(k * n_per, 5)) * 1e-3, y


def test_well_separated_clusters_carry_log2_k_bits_in_bits_not_nats():
  """Both bounds are exact here: I(X;T+Z) = I(T+Z;Y) = log2 10 = 3.32 bits (wrong: nats, 2.30)."""
  t, y = clusters()
  for bound in ("upper", "lower"):
    i_xt, i_ty = E.pairwise_information(t, y, 1.0, bound)
    assert i_xt == pytest.approx(np.log2(10), abs=1e-3)
    assert i_ty == pytest.approx(np.log2(10), abs=1e-3)


def test_labels_independent_of_the_layer_carry_almost_nothing():
  """Y drawn independently of T: I(T+Z;Y) ≈ 0 (within 0.1 bits: the plug-in bias of 10
  clusters × 10 classes on 1,000 examples is ~(9·9)/(2·1000·ln 2) ≈ 0.06 bits); Y = the cluster: H(Y) (wrong: I(T;Y) as H(Y) − something else, e.g. unweighted
  class terms, gives neither)."""
  t, y = clusters()
  shuffled = np.random.default_rng(1).permutation(y)
  _, i_ty = E.pairwise_information(t, shuffled, 1.0, "upper")
  assert abs(i_ty) < 0.1
  _, i_ty = E.pairwise_information(t, y, 1.0, "upper")
  assert i_ty == pytest.approx(np.log2(10), abs=1e-3)


def test_noisy_kde_scales_sigma_to_the_layer():
  """Multiplying a layer's activations by 10 changes nothing (σ is relative to the spread);
  wrong: an absolute σ, for which the scaled layer would look 100× less noisy."""
  rng = np.random.default_rng(0)
  t = np.maximum(rng.normal(size=(400, 20)), 0)
  y = rng.integers(0, 4, 400)
  for a, b in zip(E.noisy_kde(t, y, [0.3, 1.0]), E.noisy_kde(10 * t, y, [0.3, 1.0])):
    for k in a:
      assert a[k] == pytest.approx(b[k], rel=1e-6)
  assert E.spread(np.ones((10, 3))) == 0.0
  assert E.noisy_kde(np.ones((10, 3)), np.arange(10) % 2, [0.3]) == [
      dict(i_xt=0.0, i_ty=0.0, i_xt_lower=0.0, i_ty_lower=0.0)]


def test_noisy_kde_falls_with_the_noise_and_stays_below_log2_n():
  """Tiny noise tells all 500 points apart (log2 500 within 0.01 bits); more noise, strictly
  less information; the lower bound never above the upper (wrong: σ² multiplying the
  distances instead of dividing them, information rising with the noise; or the Bhattacharyya
  and KL scales swapped)."""
  rng = np.random.default_rng(0)
  t = rng.normal(size=(500, 30))
  y = rng.integers(0, 10, 500)
  rows = E.noisy_kde(t, y, [0.05, 0.3, 1.0, 3.0])
  i_xt = [r["i_xt"] for r in rows]
  assert i_xt[0] == pytest.approx(np.log2(500), abs=0.01)  # tiny noise: every x told apart
  assert all(a > b for a, b in zip(i_xt, i_xt[1:]))
  assert all(r["i_xt_lower"] <= r["i_xt"] + 1e-9 for r in rows)
  with pytest.raises(ValueError, match="sigma"):
    E.noisy_kde(t, y, [0.3, 0.0])


def test_equal_mass_bins_give_log2_bins_for_one_monotone_unit():
  """3,000 distinct values in 30 equal-mass bins: 100 per bin, H = log2 30 exactly (wrong:
  equal-width bins of a Gaussian unit, crowded in the middle: less). Bins are per unit: two
  units on different scales still get 30 bins each (wrong: bins pooled over the layer)."""
  a = np.random.default_rng(0).normal(size=(3000, 1))
  i_xt, _ = E.discrete_information(E.pattern_ids(E.equal_mass_bins(a, 30)), np.zeros(3000))
  assert i_xt == pytest.approx(np.log2(30), abs=1e-9)
  width, _ = E.discrete_information(E.pattern_ids(E.equal_width_bins(a, 30)), np.zeros(3000))
  assert width < np.log2(30) - 0.3
  two = E.equal_mass_bins(np.hstack([a, 1000 * a ** 3]), 30)
  assert [len(np.unique(two[:, u])) for u in (0, 1)] == [30, 30]


def test_equal_mass_bins_split_a_symmetric_unit_at_zero():
  """T symmetric about 0, Y = [T > 0], an even number of bins: the median edge is 0, so the
  bins tell Y exactly: I(T;Y) = H(Y) = 1 bit."""
  g = np.abs(np.random.default_rng(0).normal(size=1000)) + 1e-3
  t = np.concatenate([-g, g])[:, None]
  y = (t[:, 0] > 0).astype(int)
  _, i_ty = E.discrete_information(E.pattern_ids(E.equal_mass_bins(t, 10)), y)
  assert i_ty == pytest.approx(1.0, abs=1e-12)


def test_equal_mass_bins_put_tied_values_in_one_bin():
  """A ReLU unit that is 0 on 70% of the examples: the zeros share one bin (wrong: edges not
  merged, or ties split by position), the rest spread over the other bins."""
  rng = np.random.default_rng(0)
  a = np.where(rng.random(1000) < 0.7, 0.0, rng.random(1000) + 0.1)[:, None]
  ids = E.equal_mass_bins(a, 10)[:, 0]
  assert len(set(ids[a[:, 0] == 0])) == 1
  assert not set(ids[a[:, 0] == 0]) & set(ids[a[:, 0] > 0])
  assert 3 <= len(set(ids[a[:, 0] > 0])) <= 4  # ~30% of the mass: 3 of the 10 bins (or 4)


def test_unknown_estimator():
  """Wrong: an unknown name silently falling back to a default estimator."""
  with pytest.raises(ValueError, match="noisy_kde"):
    E.estimate("mine", np.zeros((3, 2)), np.zeros(3))


def test_class_terms_are_weighted_by_the_class_frequencies():
  """900 and 100 examples, every example far from every other: I(X;T+Z) = log2 1000 and each
  class term log2 n_y, so I(T+Z;Y) = log2 1000 − (0.9 log2 900 + 0.1 log2 100) = H(0.9, 0.1) =
  0.469 bits (wrong: an unweighted mean of the class terms gives 1.74)."""
  t = 100.0 * np.eye(1000)
  y = np.repeat([0, 1], [900, 100])
  _, i_ty = E.pairwise_information(t, y, 1.0, "upper")
  assert i_ty == pytest.approx(-(0.9 * np.log2(0.9) + 0.1 * np.log2(0.1)), abs=1e-6)


def test_spread_is_the_rms_distance_from_the_mean_vector():
  """Points ±1 along each of 4 axes: every point is 1 from the mean, spread 1 (wrong: the
  pooled standard deviation of all entries, 0.5; the per-unit one is smaller still)."""
  t = np.vstack([np.eye(4), -np.eye(4)])
  assert E.spread(t) == pytest.approx(1.0)
