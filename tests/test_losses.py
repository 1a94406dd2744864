"""The dVAE's losses against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nwt_jax import losses


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
