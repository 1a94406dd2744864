"""The prior's conditioning encoders: code frames, log-mel audio and the style latent.

`nwt_jax.models.prior.Prior` composes them; they are separate so each is small enough to read and
test on its own.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nwt_jax.models import transformer

Dtype = Any
# The audio encoder's two stride-2 convolutions turn 4 log-mel rows into one video frame's feature
# (the data's rate is the same: `nwt_jax.data.constants.MEL_PER_FRAME`, checked by a test).
MEL_FRAMES_PER_FRAME = 4

def partitioned(init, *names: str | None):
  """`init` with logical axis names (for `nwt_jax.training.sharding`)."""
  return nn.with_logical_partitioning(init, names)


def dense(features: int, names: tuple[str | None, str | None], *, name: str,
          dtype: Dtype, param_dtype: Dtype, use_bias: bool = False,
          kernel_init=nn.initializers.lecun_normal(), flat: bool = True) -> nn.Module:
  """A dense layer: `transformer.Dense` (2-D matmuls), or `flax.linen.Dense` where not `flat`
  (the same parameters)."""
  layer = transformer.Dense if flat else nn.Dense
  return layer(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
               kernel_init=partitioned(kernel_init, *names),
               bias_init=partitioned(nn.initializers.zeros_init(), "norm"))


def per_frame_episode(episode: jax.Array, num_frames: int) -> jax.Array:
  """Episode ids [B] (one per clip) or [B, T] -> [B, T]."""
  if episode.ndim == 1:
    return jnp.broadcast_to(episode[:, None], (episode.shape[0], num_frames))
  if episode.shape[1] != num_frames:
    raise ValueError(f"episode ids {episode.shape} do not cover {num_frames} frames")
  return episode


class FrameEmbed(nn.Module):
  """Codes [..., gh, gw, K] -> [..., gh*gw, features]: per-head code embeddings summed per position.

  One table of K * num_codes rows, so each head has its own codebook embedding.
  """
  num_codes: int  # codebook size per head
  code_heads: int  # Memcodes heads K
  features: int  # embedding width
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, codes: jax.Array) -> jax.Array:
    table = nn.Embed(self.code_heads * self.num_codes, self.features,
                     param_dtype=self.param_dtype, name="table",
                     embedding_init=partitioned(nn.initializers.normal(1.0), "vocab", "embed"))
    offsets = jnp.arange(self.code_heads) * self.num_codes  # [K]
    emb = table(codes + offsets).sum(axis=-2)  # [..., gh, gw, K, f] -> [..., gh, gw, f]
    return emb.reshape(emb.shape[:-3] + (-1, self.features))  # [..., P, f]


class AudioEncoder(nn.Module):
  """Log-mel [B, 4T, bins] -> [B, T, features] at the video frame rate.

  A conv stack (k5 s1, then two k4 s2 halvings: the output for frame t is centred on mel rows
  4t .. 4t+3) and a bidirectional transformer.
  """
  features: int = 256  # width
  num_layers: int = 2  # transformer blocks
  num_heads: int = 4  # attention heads
  head_dim: int = 64  # width per head
  mlp_dim: int = 1024  # MLP hidden width
  max_frames: int = 32  # longest window in video frames (position table size)
  mel_mean: float = -8.0  # log-mel normalisation: (mel - mel_mean) / mel_std
  mel_std: float = 4.0  # (log_mel floors at log(1e-5) = -11.5; speech peaks near +3)
  dropout_rate: float = 0.0  # residual dropout
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, mel: jax.Array, *, deterministic: bool = True) -> jax.Array:
    batch, mel_frames, _ = mel.shape
    if mel_frames % MEL_FRAMES_PER_FRAME:
      raise ValueError(f"mel has {mel_frames} rows, not a multiple of {MEL_FRAMES_PER_FRAME}")
    frames = mel_frames // MEL_FRAMES_PER_FRAME
    if frames > self.max_frames:
      raise ValueError(f"{frames} frames exceed max_frames={self.max_frames}")

    def conv(x, kernel, stride, name):
      # Replicated weights (small: k x D x D): with them sharded ('embed', 'mlp'), XLA's CPU
      # SPMD partitioner computed wrong gradients for the first conv (jax 0.10.2; measured
      # against one device by tests/integration/test_train_prior.py).
      return nn.gelu(nn.Conv(
          self.features, (kernel,), strides=(stride,), padding="SAME", dtype=self.dtype,
          param_dtype=self.param_dtype, name=name,
          kernel_init=partitioned(nn.initializers.lecun_normal(), None, None, None),
          bias_init=partitioned(nn.initializers.zeros_init(), None))(x))

    x = ((mel.astype(jnp.float32) - self.mel_mean) / self.mel_std).astype(self.dtype)
    x = conv(x, 5, 1, "conv")  # [B, 4T, D]
    x = conv(x, 4, 2, "down0")  # [B, 2T, D]
    x = conv(x, 4, 2, "down1")  # [B, T, D]
    pos = self.param("pos", partitioned(nn.initializers.normal(0.02), None, "embed"),
                     (self.max_frames, self.features), self.param_dtype)
    x = x + pos[:frames].astype(self.dtype)
    return transformer.Transformer(
        self.num_layers, self.features, self.num_heads, self.head_dim, self.mlp_dim,
        dropout_rate=self.dropout_rate, dtype=self.dtype, param_dtype=self.param_dtype,
        name="transformer")(x, deterministic=deterministic)


class StyleEncoder(nn.Module):
  """A clip's codes [B, T, gh, gw, K] -> (mu, log_sigma), each float32 [B, style_dim].

  Each frame is embedded as a whole (flattened positions, so layout such as camera offset and
  zoom is visible), passed through an MLP, then averaged over time: the average keeps what is
  constant over the clip and washes out per-frame detail like mouth shape.
  """
  num_codes: int  # codebook size per head
  code_heads: int  # Memcodes heads K
  style_dim: int = 16  # latent width
  embed_dim: int = 16  # per-position code embedding width
  hidden: int = 256  # MLP width
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, codes: jax.Array) -> tuple[jax.Array, jax.Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    batch, frames = codes.shape[:2]
    x = FrameEmbed(self.num_codes, self.code_heads, self.embed_dim, self.param_dtype,
                   name="embed")(codes)  # [B, T, P, e]
    x = x.reshape(batch, frames, -1).astype(self.dtype)  # [B, T, P*e]
    x = nn.gelu(dense(self.hidden, ("mlp", "embed"), name="in", use_bias=True, **kw)(x))
    x = nn.gelu(dense(self.hidden, ("embed", "mlp"), name="hidden", use_bias=True, **kw)(x))
    x = jnp.mean(x, axis=1)  # [B, hidden]
    # Zero-initialised: the posterior starts at N(0, I), where the KL is zero.
    out = dense(2 * self.style_dim, ("embed", None), name="out", use_bias=True,
                 kernel_init=nn.initializers.zeros_init(), **kw)(x)
    mu, log_sigma = jnp.split(out.astype(jnp.float32), 2, axis=-1)
    return mu, log_sigma


def gaussian_kl(mu: jax.Array, log_sigma: jax.Array) -> jax.Array:
  """KL(N(mu, sigma^2) || N(0, I)) summed over the last axis: [..., dim] -> float32 [...]."""
  mu, log_sigma = mu.astype(jnp.float32), log_sigma.astype(jnp.float32)
  return 0.5 * jnp.sum(mu ** 2 + jnp.exp(2.0 * log_sigma) - 1.0 - 2.0 * log_sigma, axis=-1)
