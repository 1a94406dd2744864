"""Memcodes: the multi-head attention-over-codebook bottleneck of NWT.

A faithful port of `Memcodes` in lucidrains/NWT-pytorch: the same parameters (`codes`
[heads, num_codes, dim // heads], `to_k` and `to_v` [heads, dim // heads, dim // heads], no bias,
laid out like EinMix's 'h d c' weights), so a torch state dict ports by plain copying:
`codes` <- `codes`, `to_k` <- `to_k.weight`, `to_v` <- `to_v.weight`.

Each head's query attends to its codebook's keys; training picks one code by hard Gumbel-softmax
with a straight-through gradient, evaluation by argmax. There is no codebook or commitment loss.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def _uniform_fan_in(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32):
  """U(-1/sqrt(d), 1/sqrt(d)) for [heads, d, c] weights: EinMix's init (fan_in = d)."""
  bound = shape[1] ** -0.5
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def straight_through_gumbel(logits: jax.Array, gumbel: jax.Array,
                            temperature: float) -> tuple[jax.Array, jax.Array]:
  """Hard Gumbel-softmax over the last axis, with a straight-through gradient.

  Args:
    logits: [..., num_codes] float32.
    gumbel: standard Gumbel noise, same shape as `logits`.
    temperature: softmax temperature (> 0).

  Returns:
    (attn, indices): `attn` is one-hot at `indices = argmax(logits + gumbel)` in the forward pass.
  """
  # The forward value is y_hard (a clean one-hot sample), but since y_soft - stop_gradient(y_soft)
  # is zero with the gradient of y_soft, the backward pass differentiates the relaxed sample. The
  # estimator is biased, but it lets the reconstruction loss train the codes, keys and encoder.
  y_soft = jax.nn.softmax((logits + gumbel) / temperature, axis=-1)
  indices = jnp.argmax(logits + gumbel, axis=-1)
  y_hard = jax.nn.one_hot(indices, logits.shape[-1], dtype=y_soft.dtype)
  return y_hard + y_soft - jax.lax.stop_gradient(y_soft), indices.astype(jnp.int32)


class Memcodes(nn.Module):
  """Multi-head Memcodes quantiser.

  `__call__(x, train=...)` maps x [..., dim] to (out [..., dim], indices [..., heads] int32).
  Training draws Gumbel noise from the rng stream 'gumbel' (and sows it into the 'intermediates'
  collection, kept only when that collection is mutable); evaluation is deterministic.
  """
  dim: int  # feature width of x (and of out)
  num_codes: int  # codebook size per head
  heads: int = 8  # independent codebooks; dim must be divisible by heads
  temperature: float = 1.0  # Gumbel-softmax temperature during training
  dtype: Dtype = jnp.float32  # compute dtype of the key/value projections and the output
  param_dtype: Dtype = jnp.float32  # parameter dtype

  def setup(self):
    if self.dim % self.heads:
      raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")
    d = self.dim // self.heads
    self.codes = self.param(
        "codes", nn.with_logical_partitioning(
            nn.initializers.normal(1.0), ("heads", "vocab", "kv")),
        (self.heads, self.num_codes, d), self.param_dtype)
    proj_init = nn.with_logical_partitioning(_uniform_fan_in, ("heads", "kv", None))
    self.to_k = self.param("to_k", proj_init, (self.heads, d, d), self.param_dtype)
    self.to_v = self.param("to_v", proj_init, (self.heads, d, d), self.param_dtype)

  def _project(self, weight: jax.Array) -> jax.Array:
    """Keys or values of every code: [heads, num_codes, dim // heads]."""
    return jnp.einsum("hnd,hdc->hnc", self.codes.astype(self.dtype), weight.astype(self.dtype))

  def logits(self, x: jax.Array) -> jax.Array:
    """Scaled query-key scores, float32 [..., heads, num_codes]."""
    d = self.dim // self.heads
    q = x.astype(self.dtype).reshape(x.shape[:-1] + (self.heads, d)) * d ** -0.5
    return jnp.einsum("...hd,hnd->...hn", q, self._project(self.to_k),
                      preferred_element_type=jnp.float32)

  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    if x.shape[-1] != self.dim:
      raise ValueError(f"Memcodes expects [..., {self.dim}] inputs, got {x.shape}")
    logits = self.logits(x)  # [..., heads, num_codes]
    if not train:
      indices = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      return self.decode_indices(indices), indices
    gumbel = jax.random.gumbel(self.make_rng("gumbel"), logits.shape, jnp.float32)
    self.sow("intermediates", "gumbel", gumbel)  # lets tests replay the sample
    attn, indices = straight_through_gumbel(logits, gumbel, self.temperature)
    out = jnp.einsum("...hn,hnc->...hc", attn.astype(self.dtype), self._project(self.to_v))
    return out.reshape(x.shape), indices

  def decode_indices(self, indices: jax.Array) -> jax.Array:
    """The inverse lookup: indices [..., heads] -> out [..., dim] (equals eval-mode `out`)."""
    values = self._project(self.to_v)  # [heads, num_codes, d]
    out = values[jnp.arange(self.heads), indices]  # [..., heads, d]
    return out.reshape(indices.shape[:-1] + (self.dim,))


def code_counts(indices: jax.Array, num_codes: int) -> jax.Array:
  """Per-head histogram of code indices [..., heads] -> float32 counts [heads, num_codes]."""
  heads = indices.shape[-1]
  flat = indices.reshape(-1, heads)
  return jnp.zeros((heads, num_codes), jnp.float32).at[jnp.arange(heads), flat].add(1.0)


def usage_stats(counts: jax.Array) -> dict[str, jax.Array]:
  """Per-head code-usage statistics from counts [heads, num_codes] (summable over batches).

  Returns `perplexity` [heads] (exp of the entropy of the empirical code distribution: num_codes
  when uniform, 1 when collapsed) and `usage` [heads] (fraction of codes used at least once).
  """
  probs = counts / jnp.maximum(counts.sum(axis=-1, keepdims=True), 1.0)
  entropy = jnp.sum(jax.scipy.special.entr(probs), axis=-1)  # entr(0) = 0
  return {"perplexity": jnp.exp(entropy), "usage": jnp.mean(counts > 0, axis=-1)}
