"""Convolutional building blocks whose parameters carry logical axis names.

Every parameter created here is wrapped by `nn.with_logical_partitioning`, so `sharding.py` can map
it onto the (`data`, `fsdp`, `model`) mesh: conv kernels [kh, kw, in, out] are
(None, None, 'embed', 'mlp'), dense kernels ('embed', 'mlp'), biases ('mlp',), norm scales and
biases ('norm',). Attention blocks live in `transformer.py`.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Activations of image-shaped blocks: frames over the batch mesh axes, the rest replicated.
# (Height and width are left unnamed: flax rejects a logical name used twice in one spec.)
IMAGE_AXES = ("batch", None, None, None)


def constrain_image(x: jax.Array) -> jax.Array:
  """Sharding hint for an [N, H, W, C] activation (a no-op outside a mesh with rules)."""
  return nn.with_logical_constraint(x, IMAGE_AXES)


def conv(features: int, kernel_size: int = 3, *, strides: int = 1, dtype: Dtype = jnp.float32,
         param_dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Conv:
  """A square 'SAME' conv whose kernel is (None, None, 'embed', 'mlp') and bias ('mlp',)."""
  return nn.Conv(
      features, (kernel_size, kernel_size), strides=(strides, strides), padding="SAME",
      dtype=dtype, param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), (None, None, "embed", "mlp")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)),
      name=name)


def dense(features: int, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
          name: str | None = None) -> nn.Dense:
  """A dense layer whose kernel is ('embed', 'mlp') and bias ('mlp',)."""
  return nn.Dense(
      features, dtype=dtype, param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)),
      name=name)


def group_norm(channels: int, groups: int, *, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, name: str | None = None) -> nn.GroupNorm:
  """Per-example GroupNorm; mean/variance are reduced in float32 whatever `dtype` is.

  The group count is gcd(groups, channels) so any width works with the configured count.
  """
  return nn.GroupNorm(
      num_groups=math.gcd(groups, channels), epsilon=1e-6, dtype=dtype, param_dtype=param_dtype,
      force_float32_reductions=True,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
      name=name)


class ResBlock(nn.Module):
  """Pre-activation residual block: (norm, swish, conv3x3) twice, plus a skip.

  With `cond` ([N, cond_dim]) the second norm's output is modulated by FiLM,
  h * (1 + gamma) + beta, where gamma and beta are a dense projection of `cond`.
  """
  features: int  # output channels
  norm_groups: int = 8  # GroupNorm groups (reduced to gcd with the width)
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array | None = None) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = group_norm(x.shape[-1], self.norm_groups, name="norm1", **kw)(x)
    h = conv(self.features, name="conv1", **kw)(nn.swish(h))
    h = group_norm(self.features, self.norm_groups, name="norm2", **kw)(h)
    if cond is not None:
      gamma, beta = jnp.split(dense(2 * self.features, name="film", **kw)(cond), 2, axis=-1)
      h = h * (1 + gamma[:, None, None, :]) + beta[:, None, None, :]
    h = conv(self.features, name="conv2", **kw)(nn.swish(h))
    if x.shape[-1] != self.features:
      x = conv(self.features, kernel_size=1, name="skip", **kw)(x)
    return x + h


class Downsample(nn.Module):
  """Halves height and width with a stride-2 3x3 conv."""
  features: int  # output channels
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return conv(self.features, strides=2, dtype=self.dtype, param_dtype=self.param_dtype,
                name="conv")(x)


class Upsample(nn.Module):
  """Doubles height and width: nearest-neighbour repeat, then a 3x3 conv.

  Resize + conv instead of a transposed conv avoids checkerboard artefacts.
  """
  features: int  # output channels
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # [N, 2H, 2W, C]
    return conv(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
