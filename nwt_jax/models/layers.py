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


# The initialisers of every conv's kernel [k, k, in, out] and of conv and dense biases [out],
# with their logical axis names.
CONV_KERNEL_INIT = nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                (None, None, "embed", "mlp"))
BIAS_INIT = nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",))


def conv(features: int, kernel_size: int = 3, *, strides: int = 1, dtype: Dtype = jnp.float32,
         param_dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Conv:
  """A square 'SAME' conv whose kernel is (None, None, 'embed', 'mlp') and bias ('mlp',)."""
  return nn.Conv(
      features, (kernel_size, kernel_size), strides=(strides, strides), padding="SAME",
      dtype=dtype, param_dtype=param_dtype, kernel_init=CONV_KERNEL_INIT, bias_init=BIAS_INIT,
      name=name)


def dense(features: int, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
          name: str | None = None) -> nn.Dense:
  """A dense layer whose kernel is ('embed', 'mlp') and bias ('mlp',)."""
  return nn.Dense(
      features, dtype=dtype, param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
      bias_init=BIAS_INIT, name=name)


class GroupNorm(nn.Module):
  """Per-example GroupNorm over [N, ..., C] (statistics over all but N and C, and the C / G
  channels of a group), with `flax.linen.GroupNorm`'s parameters (`scale`, `bias`) and results.

  It is computed as y = x * a + b with per-(example, channel) a and b, because XLA:CPU runs that
  form 3-4x faster than flax's (measured on the `tiny` dVAE shapes, forward and backward, with
  the swish after it): the statistics are per-channel sums first (a reduction that keeps the
  channel axis contiguous) and then per-group sums; and the groups' statistics are spread back
  over their channels by a [C, G] one-hot matmul, not a broadcast XLA would fuse into (and
  recompute inside) the full-size loop. Statistics are float32 whatever `dtype` is; the small
  matmuls run at HIGHEST precision (TPUs and TF32 GPUs would round them otherwise).
  """
  num_groups: int  # G; must divide the channel count
  epsilon: float = 1e-6  # added to the variance
  dtype: Dtype = jnp.float32  # output (compute) dtype
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    if channels % self.num_groups:
      raise ValueError(f"{self.num_groups} groups do not divide {channels} channels")
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                             ("norm",)),
                       (channels,), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                           ("norm",)),
                      (channels,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    middle = tuple(range(1, x.ndim - 1))  # all but the example and channel axes
    sums = jnp.stack([x32.sum(axis=middle), jnp.square(x32).sum(axis=middle)], axis=1)  # [N,2,C]
    one_hot = (jnp.arange(channels)[:, None] // (channels // self.num_groups)
               == jnp.arange(self.num_groups)).astype(jnp.float32)  # [C, G]
    highest = jax.lax.Precision.HIGHEST
    count = math.prod(x.shape[1:-1]) * (channels // self.num_groups)
    moments = jnp.einsum("nkc,cg->nkg", sums, one_hot, precision=highest) / count  # [N, 2, G]
    mean, mean_sq = moments[:, 0], moments[:, 1]
    inv = jax.lax.rsqrt(jnp.maximum(mean_sq - jnp.square(mean), 0.0) + self.epsilon)
    per_channel = jnp.einsum("nkg,cg->nkc", jnp.stack([inv, mean * inv], axis=1), one_hot,
                             precision=highest)  # [N, 2, C]: 1/sigma and mean/sigma
    a = per_channel[:, 0] * scale.astype(jnp.float32)  # [N, C]
    b = bias.astype(jnp.float32) - per_channel[:, 1] * scale.astype(jnp.float32)
    expand = lambda v: v.reshape((v.shape[0],) + (1,) * len(middle) + (channels,))
    return (x32 * expand(a) + expand(b)).astype(self.dtype)


def group_norm(channels: int, groups: int, *, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, name: str | None = None) -> GroupNorm:
  """Per-example GroupNorm (`GroupNorm`); mean/variance are reduced in float32 whatever `dtype`
  is. The group count is gcd(groups, channels) so any width works with the configured count.
  """
  return GroupNorm(num_groups=math.gcd(groups, channels), epsilon=1e-6, dtype=dtype,
                   param_dtype=param_dtype, name=name)


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


class _ConvParams(nn.Module):
  """The kernel [k, k, in, out] and bias [out] of `conv(...)`, created under the same names and
  initialisers, for layers that apply them with their own arithmetic."""
  features: int  # output channels
  kernel_size: int = 3  # square kernel size
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
    k = self.kernel_size
    kernel = self.param("kernel", CONV_KERNEL_INIT, (k, k, in_features, self.features),
                        self.param_dtype)
    bias = self.param("bias", BIAS_INIT, (self.features,), self.param_dtype)
    return kernel, bias


def subpixel_kernels(kernel: jax.Array) -> jax.Array:
  """A 3x3 kernel [3, 3, in, out] applied after a 2x nearest upsample -> the equivalent 2x2
  kernels on the low-resolution input, one per output phase, [2 (kh), 2 (kw), in, 2, 2, out].

  Output row 2i + a of conv3x3(upsample(x)) reads upsampled rows 2i+a-1 .. 2i+a+1, which are x
  rows (i-1, i, i) for a = 0 and (i, i, i+1) for a = 1: the 3 taps fold into 2, [W0, W1 + W2]
  over x rows (i-1, i) and [W0 + W1, W2] over (i, i+1). Columns fold the same way.
  """
  def fold(w, axis):  # [..., 3 taps on `axis`, ...] -> [2 phases, ..., 2 taps, ...]
    w0, w1, w2 = (jnp.take(w, i, axis=axis) for i in range(3))
    return jnp.stack([jnp.stack([w0, w1 + w2], axis), jnp.stack([w0 + w1, w2], axis)])

  k = fold(fold(kernel, 0), 2)  # [b, a, 2 (kh), 2 (kw), in, out]
  return jnp.transpose(k, (2, 3, 4, 1, 0, 5))  # [kh, kw, in, a, b, out]


class Upsample(nn.Module):
  """Doubles height and width: nearest-neighbour repeat, then a 3x3 'SAME' conv.

  Resize + conv instead of a transposed conv avoids checkerboard artefacts. It is computed as
  the equal sub-pixel conv: one 2x2 conv on the (1-padded) low-resolution input whose 4 * out
  channels are the four output phases (`subpixel_kernels`), then the phases are interleaved.
  That is 16 instead of 36 multiply-adds per input pixel and channel pair, and the 4x larger
  upsampled input is never formed. The parameters are a 3x3 conv's (`conv/kernel`, `conv/bias`).
  """
  features: int  # output channels
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    kernel, bias = _ConvParams(self.features, 3, self.param_dtype, name="conv")(c)
    phases = subpixel_kernels(kernel.astype(self.dtype)).reshape(2, 2, c, 4 * self.features)
    x = jnp.pad(x.astype(self.dtype), ((0, 0), (1, 1), (1, 1), (0, 0)))
    # y[:, r, s] holds every phase computed from x rows (r-1, r) and columns (s-1, s).
    y = jax.lax.conv_general_dilated(x, phases, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y.reshape(n, h + 1, w + 1, 2, 2, self.features)
    # Phase a of row i sits at r = i + a; phase b of column j at s = j + b.
    rows = [jnp.stack([y[:, a:a + h, b:b + w, a, b] for b in range(2)], axis=3)
            for a in range(2)]  # each [N, H, W, 2 (b), out]
    y = jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, self.features)  # [N, 2H, 2W, out]
    return y + bias.astype(self.dtype)
