"""Multi-scale patch discriminator for the adversarial dVAE (pix2pixHD style).

`num_scales` copies of a patch discriminator look at the frame and at 2x, 4x, ... average-pooled
versions of it. Each is a stack of stride-2 4x4 convs with leaky ReLU (GroupNorm after the first)
ending in a 1-channel map of patch logits. Intermediate activations are returned for the
feature-matching loss.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nwt_jax.models import layers

Dtype = Any


class PatchDiscriminator(nn.Module):
  """One scale: frames [N, H, W, 3] -> (logits [N, H / 2**L, W / 2**L, 1], L feature maps)."""
  channels: Sequence[int] = (64, 128, 256)  # width of each stride-2 conv (L = len(channels))
  norm_groups: int = 8  # GroupNorm groups after all but the first conv
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    features = []
    for i, width in enumerate(self.channels):
      x = layers.conv(width, kernel_size=4, strides=2, name=f"conv{i}", **kw)(x)
      if i > 0:
        x = layers.group_norm(width, self.norm_groups, name=f"norm{i}", **kw)(x)
      x = layers.constrain_image(nn.leaky_relu(x, 0.2))
      features.append(x)
    logits = layers.conv(1, name="logits", **kw)(x)
    return logits.astype(jnp.float32), features


class MultiScaleDiscriminator(nn.Module):
  """Frames [..., H, W, 3] (float in [-1, 1]) -> (per-scale logits, {'features': ...}).

  Leading dims are flattened to N frames. Returns `(logits, aux)`: `logits[s]` is scale s's
  float32 patch-logit map [N, h_s, w_s, 1], and `aux['features'][s]` the list of that scale's
  intermediate feature maps.
  """
  channels: Sequence[int] = (64, 128, 256)  # stride-2 conv widths of each scale's discriminator
  num_scales: int = 2  # frame, then 2x, 4x, ... average-pooled
  norm_groups: int = 8  # GroupNorm groups
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, frames: jax.Array) -> tuple[list[jax.Array], dict[str, Any]]:
    x = frames.reshape((-1,) + frames.shape[-3:]).astype(self.dtype)
    logits, features = [], []
    for scale in range(self.num_scales):
      if scale > 0:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
      out, feats = PatchDiscriminator(self.channels, self.norm_groups, self.dtype,
                                      self.param_dtype, name=f"scale{scale}")(x)
      logits.append(out)
      features.append(feats)
    return logits, {"features": features}
