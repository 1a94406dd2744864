"""The dVAE of NWT's stage 1: per-frame conv encoder, Memcodes, episode-conditioned decoder.

Frames are [N, H, W, 3] or [B, T, H, W, 3], uint8 RGB (or float already in [-1, 1]); episode ids
are int per frame, shaped like the frames' leading dims ([N] or [B, T]), so an episode may change
mid-video. Each frame is coded independently into a [H / f, W / f, heads] grid of code indices,
where f = 2 ** (len(channels) - 1), and decoded back to [-1, 1]:

    recon, aux = model.apply({'params': p}, frames, episode, train=True, rngs={'gumbel': key})
    codes = model.apply({'params': p}, frames, method=DVAE.encode)           # [..., gh, gw, heads]
    frames = model.apply({'params': p}, codes, episode, method=DVAE.decode)  # [..., H, W, 3]
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nwt_jax.models import layers
from nwt_jax.models import memcodes

Dtype = Any


def frames_to_float(frames: jax.Array, dtype: Dtype = jnp.float32) -> jax.Array:
  """uint8 RGB in [0, 255] -> `dtype` in [-1, 1]; floating inputs are taken as already scaled."""
  if frames.dtype == jnp.uint8:
    return (frames.astype(jnp.float32) / 127.5 - 1.0).astype(dtype)
  return frames.astype(dtype)


def frames_to_uint8(frames: jax.Array) -> jax.Array:
  """Frames in [-1, 1] (any float dtype; clipped) -> uint8 RGB in [0, 255], rounded."""
  return jnp.round((jnp.clip(frames.astype(jnp.float32), -1, 1) + 1) * 127.5).astype(jnp.uint8)


class Encoder(nn.Module):
  """Frames [N, H, W, 3] in [-1, 1] -> features [N, H / f, W / f, dim], f = 2**(levels - 1).

  A 3x3 stem, then per resolution level `res_blocks[i]` ResBlocks of width `channels[i]` followed
  (except at the last level) by a stride-2 downsample; a final norm, swish and 1x1 conv to `dim`.
  Keep full-resolution levels thin and cheap: most depth belongs at the low resolutions.
  """
  channels: Sequence[int] = (64, 128, 256)  # width per resolution level (levels - 1 halvings)
  res_blocks: Sequence[int] = (1, 1, 2)  # ResBlocks per level
  dim: int = 256  # output feature width (the Memcodes dim)
  norm_groups: int = 8  # GroupNorm groups
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if len(self.channels) != len(self.res_blocks):
      raise ValueError(f"channels {self.channels} and res_blocks {self.res_blocks} differ in "
                       "length")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.conv(self.channels[0], name="stem", **kw)(x.astype(self.dtype))
    for level, (width, blocks) in enumerate(zip(self.channels, self.res_blocks)):
      for i in range(blocks):
        x = layers.ResBlock(width, self.norm_groups, name=f"level{level}_block{i}", **kw)(x)
      if level + 1 < len(self.channels):
        x = layers.Downsample(self.channels[level + 1], name=f"down{level}", **kw)(x)
      x = layers.constrain_image(x)
    x = layers.group_norm(x.shape[-1], self.norm_groups, name="out_norm", **kw)(x)
    return layers.conv(self.dim, kernel_size=1, name="out", **kw)(nn.swish(x))


class Decoder(nn.Module):
  """Features [N, gh, gw, dim] + episode ids [N] -> frames [N, gh * f, gw * f, 3] in [-1, 1].

  Mirrors the Encoder: levels run from `channels[-1]` (lowest resolution) up to `channels[0]`,
  each `res_blocks[i]` ResBlocks then (except at full resolution) a nearest-upsample + conv. The
  episode embedding modulates every ResBlock by FiLM, so the same codes render another episode.
  """
  channels: Sequence[int] = (64, 128, 256)  # width per level, listed from full resolution down
  res_blocks: Sequence[int] = (1, 1, 2)  # ResBlocks per level, listed like `channels`
  num_episodes: int = 8  # size of the episode embedding table
  episode_dim: int = 64  # width of the episode embedding
  norm_groups: int = 8  # GroupNorm groups
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, x: jax.Array, episode: jax.Array) -> jax.Array:
    if len(self.channels) != len(self.res_blocks):
      raise ValueError(f"channels {self.channels} and res_blocks {self.res_blocks} differ in "
                       "length")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    cond = nn.Embed(
        self.num_episodes, self.episode_dim, dtype=self.dtype, param_dtype=self.param_dtype,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(1.0), (None, "embed")),
        name="episode_embed")(episode)  # [N, episode_dim]
    x = layers.conv(self.channels[-1], name="stem", **kw)(x.astype(self.dtype))
    for level in reversed(range(len(self.channels))):
      for i in range(self.res_blocks[level]):
        x = layers.ResBlock(self.channels[level], self.norm_groups,
                            name=f"level{level}_block{i}", **kw)(x, cond)
      if level > 0:
        x = layers.Upsample(self.channels[level - 1], name=f"up{level}", **kw)(x)
      x = layers.constrain_image(x)
    x = layers.group_norm(x.shape[-1], self.norm_groups, name="out_norm", **kw)(x)
    x = layers.conv(3, name="out", **kw)(nn.swish(x))
    return jnp.tanh(x.astype(jnp.float32))


class DVAE(nn.Module):
  """Encoder -> Memcodes -> episode-conditioned Decoder, applied frame by frame.

  `__call__(frames, episode, *, train) -> (recon, aux)`: recon float32 in [-1, 1] shaped like
  `frames`; aux holds `indices` int32 [..., gh, gw, heads], `code_counts` [heads, num_codes]
  (this batch's per-head histogram) and its `perplexity` and `usage` [heads]
  (see `memcodes.usage_stats`). Training needs the rng stream 'gumbel'.
  """
  channels: Sequence[int] = (64, 128, 256)  # encoder/decoder width per level; f = 2**(levels-1)
  res_blocks: Sequence[int] = (1, 1, 2)  # encoder ResBlocks per level
  decoder_res_blocks: Sequence[int] | None = None  # decoder ResBlocks per level (None: as encoder)
  dim: int = 256  # Memcodes width
  num_codes: int = 512  # codes per head
  heads: int = 8  # Memcodes heads
  temperature: float = 1.0  # Gumbel-softmax temperature
  num_episodes: int = 8  # episode ids the decoder knows
  episode_dim: int = 64  # episode embedding width
  norm_groups: int = 8  # GroupNorm groups
  dtype: Dtype = jnp.float32  # compute dtype (bf16 on GPU/TPU); norms reduce in float32
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @property
  def downsample_factor(self) -> int:
    """Frame height / grid height."""
    return 2 ** (len(self.channels) - 1)

  def setup(self):
    kw = dict(channels=self.channels, norm_groups=self.norm_groups, dtype=self.dtype,
              param_dtype=self.param_dtype)
    self.encoder = Encoder(res_blocks=self.res_blocks, dim=self.dim, **kw)
    self.quantizer = memcodes.Memcodes(self.dim, self.num_codes, self.heads, self.temperature,
                                       dtype=self.dtype, param_dtype=self.param_dtype)
    self.decoder = Decoder(
        res_blocks=(self.res_blocks if self.decoder_res_blocks is None
                    else self.decoder_res_blocks),
        num_episodes=self.num_episodes, episode_dim=self.episode_dim, **kw)

  def _quantize(self, frames: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    """frames [..., H, W, 3] -> (quantised [N, gh, gw, dim], indices [N, gh, gw, heads])."""
    x = frames_to_float(frames, self.dtype).reshape((-1,) + frames.shape[-3:])
    return self.quantizer(self.encoder(x), train=train)

  def _render(self, z: jax.Array, episode: jax.Array, batch_shape: tuple[int, ...]) -> jax.Array:
    """z [N, gh, gw, dim], episode [*batch_shape] -> frames [*batch_shape, H, W, 3]."""
    if episode.shape != batch_shape:
      raise ValueError(f"episode ids must have shape {batch_shape} (one per frame), "
                       f"got {episode.shape}")
    frames = self.decoder(layers.constrain_image(z), episode.reshape(-1))
    return frames.reshape(batch_shape + frames.shape[1:])

  def __call__(self, frames: jax.Array, episode: jax.Array, *,
               train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    batch_shape = frames.shape[:-3]
    z, indices = self._quantize(frames, train)
    recon = self._render(z, episode, batch_shape)
    indices = indices.reshape(batch_shape + indices.shape[1:])
    counts = memcodes.code_counts(indices, self.num_codes)
    return recon, {"indices": indices, "code_counts": counts, **memcodes.usage_stats(counts)}

  def encode(self, frames: jax.Array) -> jax.Array:
    """Eval-mode (argmax) code indices: frames [..., H, W, 3] -> int32 [..., gh, gw, heads]."""
    _, indices = self._quantize(frames, train=False)
    return indices.reshape(frames.shape[:-3] + indices.shape[1:])

  def decode(self, indices: jax.Array, episode: jax.Array) -> jax.Array:
    """indices [..., gh, gw, heads] + episode [...] -> frames float32 [..., H, W, 3] in [-1, 1]."""
    batch_shape = indices.shape[:-3]
    z = self.quantizer.decode_indices(indices.reshape((-1,) + indices.shape[-3:]))
    return self._render(z, episode, batch_shape)
