"""The losses against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nwt_jax.models import prior as prior_lib
from nwt_jax.training import losses


def test_l1_loss():
  recon = jnp.array([[0.5, -1.0], [0.0, 1.0]])
  target = jnp.array([[0.0, -0.5], [0.0, -1.0]])
  assert float(losses.l1_loss(recon, target)) == pytest.approx((0.5 + 0.5 + 0 + 2) / 4)
  with pytest.raises(ValueError, match="shape"):
    losses.l1_loss(recon, target[:1])


def test_hinge_discriminator_loss_by_hand():
  real = jnp.array([2.0, 0.5, -1.0])  # relu(1 - real) = [0, 0.5, 2]
  fake = jnp.array([-2.0, 0.0, 0.5, 1.0])  # relu(1 + fake) = [0, 1, 1.5, 2]
  expected = (0 + 0.5 + 2) / 3 + (0 + 1 + 1.5 + 2) / 4
  assert float(losses.hinge_discriminator_loss(real, fake)) == pytest.approx(expected)
  # Per-scale lists average the scales' losses.
  real2, fake2 = jnp.array([[3.0]]), jnp.array([[-0.5]])  # 0 and 0.5
  assert float(losses.hinge_discriminator_loss([real, real2], [fake, fake2])) == pytest.approx(
      (expected + 0.5) / 2)
  with pytest.raises(ValueError, match="leaf counts"):
    losses.hinge_discriminator_loss([real, real2], [fake])


def test_hinge_generator_loss_by_hand():
  fake = jnp.array([[-2.0, 0.0], [0.5, 3.5]])
  assert float(losses.hinge_generator_loss(fake)) == pytest.approx(-0.5)
  assert float(losses.hinge_generator_loss([fake, jnp.array([1.0, 3.0])])) == pytest.approx(
      (-0.5 - 2.0) / 2)


def test_feature_matching_zero_for_identical_and_stops_real_gradient():
  rng = np.random.default_rng(0)
  real = [[jnp.asarray(rng.standard_normal((2, 4, 4, 3))), jnp.asarray(rng.standard_normal(5))],
          [jnp.asarray(rng.standard_normal((2, 2, 2, 8)))]]
  assert float(losses.feature_matching_loss(real, real)) == 0.0
  fake = jax.tree.map(lambda x: x + 0.25, real)
  assert float(losses.feature_matching_loss(real, fake)) == pytest.approx(0.25)
  g_real, g_fake = jax.grad(losses.feature_matching_loss, argnums=(0, 1))(real, fake)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_real))
  assert all(float(jnp.abs(g).min()) > 0.0 for g in jax.tree.leaves(g_fake))


def test_losses_are_float32_for_bfloat16_inputs():
  fake = jnp.full((4,), 0.1, jnp.bfloat16)
  assert losses.hinge_generator_loss(fake).dtype == jnp.float32
  assert losses.l1_loss(fake, jnp.zeros((4,), jnp.bfloat16)).dtype == jnp.float32


# --- the prior's change-weighted cross-entropy -------------------------------------------------


def _repeat_then(counts):
  """codes [N, 2]: frame 0 is code 0; frame 1 is code v in counts[v] rows (its frequency)."""
  second = np.repeat(np.arange(len(counts)), counts)
  return jnp.asarray(np.stack([np.zeros_like(second), second], 1))


@pytest.mark.parametrize("weight", [1.0, 4.0])
def test_change_weighted_loss_is_minimised_by_the_data_distribution(weight):
  """Logit adjustment: whatever the weight, the loss is stationary at logits = log p (the
  frequencies of frame 1 after code 0), so softmax(logits) stays calibrated."""
  counts = np.array([6, 3, 2, 1])  # code 0 repeats the previous frame's, 1..3 change
  codes = _repeat_then(counts)

  def loss(second_logits):  # frame 1's logits, shared by every row; frame 0's fixed
    logits = jnp.broadcast_to(jnp.stack([jnp.zeros(4), second_logits]), codes.shape + (4,))
    return losses.change_weighted_cross_entropy(logits, codes, weight)

  calibrated = jnp.log(counts / counts.sum())
  np.testing.assert_allclose(jax.grad(loss)(calibrated), 0.0, atol=1e-6)
  assert np.abs(jax.grad(loss)(jnp.zeros(4))).max() > 1e-2
  assert np.abs(jax.grad(loss)(calibrated + jnp.array([1.0, 0, 0, 0]))).max() > 1e-2


@pytest.mark.parametrize("seen", [0, 2])
def test_change_weighted_loss_weighs_against_the_frame_the_model_saw(seen):
  """With `prev` (a stale frame showed code `seen` before frame 1), codes are new where they
  differ from `seen`, and the loss is still stationary at the data's frequencies."""
  counts = np.array([6, 3, 2, 1])
  codes = _repeat_then(counts)
  prev = jnp.stack([jnp.full(len(codes), -1), jnp.full(len(codes), seen)], 1)

  def loss(second_logits, prev):
    logits = jnp.broadcast_to(jnp.stack([jnp.zeros(4), second_logits]), codes.shape + (4,))
    return losses.change_weighted_cross_entropy(logits, codes, 4.0, prev=prev)

  calibrated = jnp.log(counts / counts.sum())
  np.testing.assert_allclose(jax.grad(loss)(calibrated, prev), 0.0, atol=1e-6)
  logits = jax.random.normal(jax.random.key(0), (4,))
  default = losses.change_weighted_cross_entropy(
      jnp.broadcast_to(jnp.stack([jnp.zeros(4), logits]), codes.shape + (4,)), codes, 4.0)
  assert (float(loss(logits, prev)) == pytest.approx(float(default))) == (seen == 0)


def test_change_weight_scales_the_changed_codes():
  codes = jnp.array([[0, 0], [0, 1]])  # row 0 repeats, row 1 changes
  logits = jnp.zeros((2, 2, 2))
  ce = np.log(2.0)
  assert float(losses.change_weighted_cross_entropy(logits, codes, 1.0)) == pytest.approx(ce)
  # weight 3: the changed code's CE is taken at logits - log 3 * one_hot(0) and weighs 3.
  changed = -jax.nn.log_softmax(jnp.array([-np.log(3.0), 0.0]))[1]
  unchanged = -jax.nn.log_softmax(jnp.array([-np.log(3.0), 0.0]))[0]
  # frame 0 (no previous frame: new codes, weight 3, no shift): 2 codes at CE log 2.
  expected = (2 * 3 * ce + unchanged + 3 * changed) / (2 * 3 + 1 + 3)
  got = float(losses.change_weighted_cross_entropy(logits, codes, 3.0))
  assert got == pytest.approx(float(expected), rel=1e-6)


def test_first_weight_applies_exactly_where_no_previous_code_was_seen():
  rng = np.random.default_rng(0)
  codes = jnp.asarray(rng.integers(0, 4, (2, 3, 2, 2, 1)))  # [B, T, gh, gw, K]
  logits = jnp.asarray(rng.normal(size=codes.shape + (4,)), jnp.float32)
  prev = prior_lib.previous_frame_codes(codes)
  prev = prev.at[1, 2].set(-1)  # as if window 1's frame 2 saw the BOS frame (dropout)
  ce, nll, w = losses.code_losses(logits, codes, 5.0, prev=prev)
  ce1, nll1, w1 = losses.code_losses(logits, codes, 5.0, prev=prev, first_weight=1.5)
  none_seen = np.asarray(prev < 0)
  assert none_seen.sum() == 2 * 4 + 4  # frame 0 of both windows and the dropped frame
  np.testing.assert_array_equal(np.asarray(w1)[none_seen], 1.5)
  np.testing.assert_array_equal(np.asarray(w1)[~none_seen], np.asarray(w)[~none_seen])
  np.testing.assert_array_equal(ce1, ce)  # only the weights change, not the adjusted losses
  np.testing.assert_array_equal(nll1, nll)
