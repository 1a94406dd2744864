"""Loss functions (pure jnp), computed in float32.

The adversarial dVAE's losses accept a single array or a pytree of arrays (e.g. the list of
per-scale logits of `MultiScaleDiscriminator`); a pytree's loss is the mean of its leaves' losses.
"""

from typing import Any

import jax
import jax.numpy as jnp

from nwt_jax.models import prior as prior_lib

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


# -------------------------------------------------------------------------------------------------
# Prior losses (stage 2): cross-entropy per code and the style latent's KL.


def _pick(x: jax.Array, index: jax.Array) -> jax.Array:
  """x [..., V] at index [...] -> [...] (0 where index is outside [0, V)).

  A masked sum, not a gather: its gradient is the same mask, where a gather's is a scatter-add
  (XLA:CPU runs scatters element by element).
  """
  hit = jnp.arange(x.shape[-1]) == index[..., None].astype(jnp.int32)
  return jnp.sum(jnp.where(hit, x, 0.0), axis=-1)


def code_cross_entropy(logits: jax.Array, codes: jax.Array, *,
                       label_smoothing: float = 0.0) -> jax.Array:
  """Cross-entropy of each code under logits [..., num_codes] -> float32 [...] (codes' shape).

  With label smoothing e the target is (1 - e) * one_hot(code) + e / num_codes, computed from the
  log-softmax directly (no one-hot of the vocabulary is materialised).
  """
  return code_losses(logits, codes, label_smoothing=label_smoothing)[0]



def code_losses(logits: jax.Array, codes: jax.Array, weight: float = 1.0, *,
                label_smoothing: float = 0.0, prev: jax.Array | None = None,
                first_weight: float | None = None
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-code losses of codes [...] under logits [..., V], all from one logsumexp:

  (cross-entropy under the logits adjusted by `change_weighted_cross_entropy`'s shift
  -log(weight) at the previous code `prev` (-1: none), with label smoothing; the plain NLL;
  the change weights, weight where the code differs from `prev`, else 1, and `first_weight`
  (default: weight) where there is no previous code, at frame 0 and after a BOS-frame dropout),
  each float32 [...].

  The shift touches one logit per code, so the adjusted logsumexp is the plain one plus
  log(1 - p_prev (1 - 1/weight)), p_prev = softmax(logits)[prev]: one pass over the logits
  serves both losses, where two log-softmaxes (and their backward passes) would take three.
  """
  if logits.shape[:-1] != codes.shape:
    raise ValueError(f"logits {logits.shape} do not match codes {codes.shape} + (num_codes,)")
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  target = _pick(logits, codes)
  nll = lse - target
  if weight == 1.0:
    shifted_lse, shift_at_target, shift_mean = lse, 0.0, 0.0
    weights = jnp.ones_like(nll)
  else:
    prev = prior_lib.previous_frame_codes(codes) if prev is None else prev
    shift = jnp.log(weight)
    p_prev = jnp.where(prev >= 0, jnp.exp(_pick(logits, prev) - lse), 0.0)
    shifted_lse = lse + jnp.log1p(-p_prev * (1.0 - 1.0 / weight))
    shift_at_target = shift * (codes == prev)
    shift_mean = shift * (prev >= 0) / logits.shape[-1]
    weights = jnp.where(codes != prev, weight, 1.0)  # prev -1 (frame 0) is never a code
  if first_weight is not None and first_weight != weight:
    # Frame 0 sets the look (episode, style); generation replaces it with a frame of the frame
    # bank, and with `weight` on all of its codes it would take most of a window's loss.
    prev = prior_lib.previous_frame_codes(codes) if prev is None else prev
    weights = jnp.where(prev < 0, first_weight, weights)
  ce = shifted_lse - target + shift_at_target
  if label_smoothing:
    mean_log_prob = jnp.mean(logits, axis=-1) - shift_mean - shifted_lse
    ce = (1.0 - label_smoothing) * ce - label_smoothing * mean_log_prob
  return ce, nll, weights


def change_weighted_cross_entropy(logits: jax.Array, codes: jax.Array, weight: float, *,
                                  label_smoothing: float = 0.0, prev: jax.Array | None = None
                                  ) -> jax.Array:
  """Mean cross-entropy of codes [B, T, ...] with the codes that differ from the previous
  frame's weighted `weight` times, the logits still those of the data's distribution (logit
  adjustment, Menon et al. 2021). Frame 0 has no previous frame: all its codes are new and weigh
  `weight` too (they set the look: episode and style).

  Most codes repeat the previous frame's, so the rare changes (a mouth opening) give little of
  the plain loss's gradient. The minimiser of the weighted loss over softmax(logits') is
  p' ~ weight^[code changed] * p; training logits' = logits - log(weight) * one_hot(previous code)
  makes softmax(logits) = p itself, so sampling and the reported NLL need no correction.

  `prev` (default: the true previous frame's codes, -1 at frame 0) is what the model saw as the
  previous frame: the prior's `aux['prev_codes']`, which differ where training showed it a stale
  frame or the BOS frame. The weights and the adjustment must use what the model saw, or the
  correction no longer holds. (`code_losses` computes it, and the plain NLL, in one pass.)
  """
  ce, _, w = code_losses(logits, codes, weight, label_smoothing=label_smoothing, prev=prev)
  return jnp.sum(w * ce) / jnp.sum(w)
