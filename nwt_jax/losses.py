"""Loss functions (pure jnp), computed in float32.

The adversarial dVAE's losses accept a single array or a pytree of arrays (e.g. the list of
per-scale logits of `MultiScaleDiscriminator`); a pytree's loss is the mean of its leaves' losses.
"""

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def _mean_over_leaves(fn, *trees: PyTree) -> jax.Array:
  """Mean over matching leaves of `trees` of fn(*leaves) (each leaf cast to float32)."""
  leaves = [jax.tree.leaves(t) for t in trees]
  if len({len(l) for l in leaves}) != 1 or not leaves[0]:
    raise ValueError(f"expected non-empty trees with equal leaf counts, got "
                     f"{[len(l) for l in leaves]}")
  values = [fn(*(x.astype(jnp.float32) for x in xs)) for xs in zip(*leaves)]
  return sum(values) / len(values)


def l1_loss(recon: jax.Array, target: jax.Array) -> jax.Array:
  """Mean absolute error between reconstruction and target (same shape, same scale)."""
  if recon.shape != target.shape:
    raise ValueError(f"shape mismatch: {recon.shape} vs {target.shape}")
  return jnp.mean(jnp.abs(recon.astype(jnp.float32) - target.astype(jnp.float32)))


def hinge_discriminator_loss(real_logits: PyTree, fake_logits: PyTree) -> jax.Array:
  """mean(relu(1 - D(real))) + mean(relu(1 + D(fake))), averaged over scales."""
  return _mean_over_leaves(
      lambda real, fake: jnp.mean(jax.nn.relu(1 - real)) + jnp.mean(jax.nn.relu(1 + fake)),
      real_logits, fake_logits)


def hinge_generator_loss(fake_logits: PyTree) -> jax.Array:
  """-mean(D(fake)), averaged over scales: the generator's side of the hinge GAN."""
  return _mean_over_leaves(lambda fake: -jnp.mean(fake), fake_logits)


def feature_matching_loss(real_features: PyTree, fake_features: PyTree) -> jax.Array:
  """Mean over discriminator layers of the L1 distance between real and fake feature maps.

  The real side is a fixed target (stop-gradient), so this loss only trains the generator.
  """
  return _mean_over_leaves(
      lambda real, fake: jnp.mean(jnp.abs(fake - jax.lax.stop_gradient(real))),
      real_features, fake_features)
