"""The MAR prior's depth decoder: a causal transformer over one frame's L = P*K codes.

Code j of frame t (raster order, position-major, head-minor) sees the frame's spatial output at
its position and code j-1 (a learned BOS before code 0), as RQ-Transformer's depth stack; with
`depth_window_rows`, only the codes of its own block of rows and of the block before.

`MARDepth` is a base class of `nwt_jax.models.prior.Prior`, not a submodule: `Prior.setup` calls
`_setup_depth`, so the depth decoder's parameters (depth_in, depth_pos, depth_token, depth_bos,
depth, depth_head and, with the copy gate, depth_copy and depth_copy_bias) sit at the top of the
prior's parameter tree, where checkpoints hold them. It reads the prior's fields (grid,
code_heads, num_codes, depth_dim, depth_layers, depth_window_rows, num_heads, dropout_rate,
copy_gate, spatial_patch, dtype, param_dtype) and uses its `_from_patches` and `_copy_logits`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from nwt_jax.models import transformer
from nwt_jax.models.prior_encoders import dense, partitioned


class MARDepth(nn.Module):
  """The depth decoder half of `Prior` (decoder='mar'); see the module docstring."""

  @property
  def depth_block(self) -> int:
    """MAR: codes per block of the depth stack's local attention (0: the whole frame)."""
    return self.depth_window_rows * self.grid[1] * self.code_heads

  def _setup_depth(self, kw: dict) -> None:
    """Makes the depth decoder's layers (called from `Prior.setup`; kw: the dtypes)."""
    dd, s = self.depth_dim, self.spatial_patch
    self.depth_in = dense(s * s * dd, ("embed", "mlp"), name="depth_in", **kw)
    self.depth_pos = self.param("depth_pos", partitioned(nn.initializers.normal(0.02), None, "embed"),
                                (self.codes_per_frame, dd), self.param_dtype)
    # Row k * num_codes + c: code c of head k as the previous token; `depth_bos` before code 0.
    self.depth_token = nn.Embed(
        self.code_heads * self.num_codes, dd, param_dtype=self.param_dtype,
        embedding_init=partitioned(nn.initializers.normal(1.0), "vocab", "embed"))
    self.depth_bos = self.param("depth_bos", partitioned(nn.initializers.normal(1.0), "embed"),
                                (dd,), self.param_dtype)
    if self.grid[0] % max(self.depth_window_rows, 1):
      raise ValueError(f"depth_window_rows={self.depth_window_rows} must divide the grid's "
                       f"{self.grid[0]} rows")
    self.depth = transformer.Transformer(
        self.depth_layers, dd, self.num_heads, dd // self.num_heads, 4 * dd,
        dropout_rate=self.dropout_rate, local_block=self.depth_block, **kw)
    self.depth_head = self.param(  # [K, dd, V]: one output layer per head
        "depth_head", partitioned(nn.initializers.lecun_normal(1, 2, (0,)), None, "embed", "vocab"),
        (self.code_heads, dd, self.num_codes), self.param_dtype)
    if self.copy_gate:  # [K, dd] + [K]: one gate per head, as the output layer
      self.depth_copy = self.param("depth_copy", partitioned(nn.initializers.zeros_init(), None,
                                                       "embed"), (self.code_heads, dd),
                                   self.param_dtype)
      self.depth_copy_bias = self.param("depth_copy_bias", partitioned(
          nn.initializers.zeros_init(), None), (self.code_heads,), self.param_dtype)

  def _depth_context(self, c: jax.Array) -> jax.Array:
    """[B, T, P', d] -> [B, T, L, dd]: each code's input before its previous-token embedding."""
    x = self.depth_in(c.astype(self.dtype))  # [B, T, P', S*S*dd]
    x = self._from_patches(x.reshape(x.shape[:3] + (self.spatial_patch**2, self.depth_dim)))
    x = jnp.repeat(x, self.code_heads, axis=2)  # [B, T, P*K, dd]: position p for its K codes
    return x + self.depth_pos.astype(self.dtype)

  def _mar_logits(self, c: jax.Array, codes: jax.Array, prev_codes: jax.Array,
                  deterministic: bool) -> jax.Array:
    """Teacher-forced depth stack: [B, T, P', d], codes and the previous frame's codes (-1: none)
    [B, T, gh, gw, K] -> [B, T, gh, gw, K, V]."""
    batch, frames = codes.shape[:2]
    length, k, v = self.codes_per_frame, self.code_heads, self.num_codes
    flat = codes.reshape(batch, frames, length)  # [B, T, L] raster order, head-minor
    prev_rows = (jnp.arange(length - 1) % k) * v + flat[..., :-1]  # code j-1 in its head's rows
    prev = self.depth_token(prev_rows)  # [B, T, L-1, dd]
    bos = jnp.broadcast_to(self.depth_bos, (batch, frames, 1, self.depth_dim))
    prev = jnp.concatenate([bos, prev], axis=2)  # [B, T, L, dd]: input j embeds code j-1
    x = self._depth_context(c) + prev.astype(self.dtype)  # [B, T, L, dd]
    x = x.reshape(batch * frames, length, self.depth_dim)  # [B*T, L, dd]
    positions = jnp.arange(length)
    mask = None if self.depth_block else transformer.causal_mask(positions, positions)
    y = self.depth(x, mask=mask, deterministic=deterministic)
    y = y.reshape(batch, frames, self.positions, k, self.depth_dim)  # [B, T, P, K, dd]
    logits = jnp.einsum("btpkd,kdv->btpkv", y.astype(self.dtype),
                        self.depth_head.astype(self.dtype)).astype(jnp.float32)
    if self.copy_gate:
      gate = (jnp.einsum("btpkd,kd->btpk", y.astype(self.dtype),
                         self.depth_copy.astype(self.dtype)) + self.depth_copy_bias)
      logits = logits + self._copy_logits(gate, prev_codes.reshape(gate.shape))
    return logits.reshape((batch, frames) + self.grid + (k, v))

  def mar_code_step(self, frame_ctx: dict[str, jax.Array], prev_code: jax.Array, j: jax.Array,
                    cache: dict[str, transformer.Cache]
                    ) -> tuple[jax.Array, dict[str, transformer.Cache]]:
    """MAR: code j-1 of the frame [B] (ignored at j=0) -> (logits of code j [B, V], cache)."""
    if self.decoder != "mar":
      raise ValueError("mar_code_step needs decoder='mar'")
    k, v = self.code_heads, self.num_codes
    prev = self.depth_token(((j - 1) % k) * v + prev_code)  # [B, dd]
    prev = jnp.where(j == 0, self.depth_bos, prev)
    x_j = jax.lax.dynamic_slice_in_dim(frame_ctx["inputs"], j, 1, axis=1)  # [B, 1, dd]
    x = x_j + prev[:, None].astype(self.dtype)
    y, depth_cache = self.depth.decode(x, cache["depth"], j)  # [B, 1, dd]
    head = self.depth_head[j % k].astype(self.dtype)  # [dd, V]: code j belongs to head j % K
    logits = jnp.einsum("bd,dv->bv", y[:, 0].astype(self.dtype), head).astype(jnp.float32)
    if self.copy_gate:
      gate = (y[:, 0].astype(self.dtype) @ self.depth_copy[j % k].astype(self.dtype)
              + self.depth_copy_bias[j % k])  # [B]
      prev_j = jax.lax.dynamic_slice_in_dim(frame_ctx["prev_frame"], j, 1, axis=1)  # [B, 1]
      logits = logits + self._copy_logits(gate[:, None], prev_j)[:, 0]
    return logits, {**cache, "depth": depth_cache}
