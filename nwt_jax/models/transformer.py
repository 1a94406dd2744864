"""Pre-LayerNorm transformer blocks with an explicit KV cache, for the prior.

Attention goes through `jax.nn.dot_product_attention` (the fused kernel where the backend has one).
Every parameter carries logical axis names: q/k/v kernels ('embed', 'heads', 'kv'), the output
kernel ('heads', 'kv', 'embed'), MLP kernels ('embed', 'mlp') and ('mlp', 'embed'), norms
('norm',). Activations are constrained to ('batch', 'length', 'embed') at block boundaries; the
KV cache is laid out [batch, length, heads, kv] with the same names.

Two ways to run a stack:

    y = stack(x, mask=causal_mask(n))                         # teacher forcing, all positions
    cache = stack.init_cache(batch, max_len)                  # zeros, fixed size
    y_t, cache = stack.apply(v, x_t, cache, t, method='decode')   # positions t .. t+n-1

`decode` writes the new keys/values into the preallocated cache with
`jax.lax.dynamic_update_slice` at the (traced) index `t` and attends causally over the whole
buffer, so a decoding loop compiles once whatever its length; entries past `t` are masked out and
never read, so a cache can be reused without clearing it. Cross-attention keys/values of a fixed
context are computed once with `cross_kv` and passed to every call.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
KV = tuple[jax.Array, jax.Array]  # (keys, values), each [batch, length, heads, head_dim]
Cache = list[dict[str, jax.Array]]  # one {'k', 'v'} per layer, each [batch, max_len, heads, kv]

ACTIVATION_AXES = ("batch", "length", "embed")
CACHE_AXES = ("batch", "length", "heads", "kv")


def causal_mask(q_positions: jax.Array, k_positions: jax.Array) -> jax.Array:
  """Boolean [1, 1, q, k] mask: query i may attend to key j iff k_positions[j] <= q_positions[i].

  Plain causal masks use token indices as positions; block-causal ones use block indices (see
  `block_causal_mask`).
  """
  return (k_positions[None, :] <= q_positions[:, None])[None, None]


def local_causal_mask(q_positions: jax.Array, k_positions: jax.Array, block: int) -> jax.Array:
  """Like `causal_mask`, but a query in block b = position // block sees only blocks b-1 and b
  (between `block` and 2 * block - 1 earlier tokens): what `Attention.attend_local` computes."""
  recent = (k_positions[None, :] // block) >= (q_positions[:, None] // block - 1)
  return causal_mask(q_positions, k_positions) & recent[None, None]


def block_causal_mask(length: int, block: int) -> jax.Array:
  """[1, 1, length, length]: a token sees every token of its own block and of earlier blocks.

  E.g. tokens laid out frame by frame (block = tokens per frame): a frame's tokens see each other
  and all earlier frames, never a later frame.
  """
  blocks = jnp.arange(length) // block
  return causal_mask(blocks, blocks)


def _partitioned(init, names: Sequence[str | None]):
  return nn.with_logical_partitioning(init, tuple(names))


def flat_dot(x: jax.Array, kernel: jax.Array, in_dims: int = 1) -> jax.Array:
  """x [..., *K] times kernel [*K, *N] -> [..., *N] (K: the last `in_dims` axes of x), computed
  as one 2-D [M, K] x [K, N] matmul.

  With several leading axes on x, the weight gradient contracts over all of them, and XLA:CPU
  makes such a dot 2-D by physically transposing the big output gradient first (a strided copy
  as costly as the matmul: the `tiny` prior's spatial MLP took 161 ms forward + backward on one
  core that way, 93 ms flattened). Flattening here keeps every matmul of both passes 2-D; on
  GPU/TPU the reshapes are free. (One caller is not flattened: see `Prior.prev_proj`.)
  """
  contract, out = kernel.shape[:in_dims], kernel.shape[in_dims:]
  if x.shape[x.ndim - in_dims:] != contract:
    raise ValueError(f"x {x.shape} does not end in the kernel's input axes {contract}")
  lead = x.shape[:x.ndim - in_dims]
  y = jnp.dot(x.reshape(-1, math.prod(contract)), kernel.reshape(math.prod(contract), -1))
  return y.reshape(lead + out)


class Dense(nn.Module):
  """`flax.linen.Dense` (same `kernel` [in, features] and `bias` [features] parameters) computed
  with `flat_dot`."""
  features: int  # output width
  use_bias: bool = True  # add a learned bias
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32  # parameter dtype
  kernel_init: Any = nn.initializers.lecun_normal()  # (boxed) kernel initialiser
  bias_init: Any = nn.initializers.zeros_init()  # (boxed) bias initialiser

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                        self.param_dtype)
    y = flat_dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,),
                         self.param_dtype).astype(self.dtype)
    return y


def layer_norm(name: str, param_dtype: Dtype = jnp.float32) -> nn.LayerNorm:
  """LayerNorm computed in float32 whatever the compute dtype (its output is float32)."""
  return nn.LayerNorm(
      epsilon=1e-6, dtype=jnp.float32, param_dtype=param_dtype,
      scale_init=_partitioned(nn.initializers.ones_init(), ("norm",)),
      bias_init=_partitioned(nn.initializers.zeros_init(), ("norm",)), name=name)


class HeadsProjection(nn.Module):
  """x [..., D] -> [..., heads, head_dim] with a kernel [D, heads, head_dim] named
  ('embed', 'heads', 'kv').

  (nn.DenseGeneral initialises its kernel flat, [D, heads * head_dim], which clashes with a
  three-name logical sharding when a mesh is active; this kernel has its real shape throughout.)
  """
  num_heads: int  # attention heads
  head_dim: int  # width of each head
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        "kernel", _partitioned(nn.initializers.lecun_normal(0, (1, 2)), ("embed", "heads", "kv")),
        (x.shape[-1], self.num_heads, self.head_dim), self.param_dtype)
    return flat_dot(x.astype(self.dtype), kernel.astype(self.dtype))  # [..., heads, head_dim]


class MergeHeads(nn.Module):
  """[..., heads, head_dim] -> [..., features], kernel [heads, head_dim, features] named
  ('heads', 'kv', 'embed')."""
  features: int  # output width
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        "kernel", _partitioned(nn.initializers.lecun_normal((0, 1), 2), ("heads", "kv", "embed")),
        x.shape[-2:] + (self.features,), self.param_dtype)
    return flat_dot(x.astype(self.dtype), kernel.astype(self.dtype), in_dims=2)  # [..., D]


class Attention(nn.Module):
  """Multi-head attention, split into `project_kv` and `attend` so K/V can be cached."""
  features: int  # model width of queries and output
  num_heads: int  # attention heads
  head_dim: int  # width of each head
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32  # parameter dtype

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.query = HeadsProjection(self.num_heads, self.head_dim, name="query", **kw)
    self.key = HeadsProjection(self.num_heads, self.head_dim, name="key", **kw)
    self.value = HeadsProjection(self.num_heads, self.head_dim, name="value", **kw)
    self.out = MergeHeads(self.features, name="out", **kw)

  def project_kv(self, x: jax.Array) -> KV:
    """[B, S, D] -> keys and values, each [B, S, heads, head_dim]."""
    return self.key(x), self.value(x)

  def attend(self, x: jax.Array, kv: KV, mask: jax.Array | None = None) -> jax.Array:
    """Queries from x [B, T, D] attend over kv; mask broadcasts to [B, heads, T, S]."""
    q = self.query(x)  # [B, T, heads, head_dim]
    k, v = (a.astype(q.dtype) for a in kv)
    out = jax.nn.dot_product_attention(q, k, v, mask=mask)  # [B, T, heads, head_dim]
    return self.out(out)  # [B, T, D]

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Self-attention over x [B, T, D]."""
    return self.attend(x, self.project_kv(x), mask)

  def attend_local(self, x: jax.Array, block: int) -> jax.Array:
    """Causal self-attention over x [B, T, D] restricted to `local_causal_mask(.., block)`.

    Computed block by block (queries of block b against the keys of blocks b-1 and b), so the
    cost is T * 2 * block instead of T ** 2: what makes a long code-by-code sequence affordable.
    """
    batch, length = x.shape[:2]
    if length % block:
      raise ValueError(f"sequence length {length} is not a multiple of the block {block}")
    n = length // block
    q = self.query(x)
    k, v = (a.astype(q.dtype) for a in self.project_kv(x))
    split = lambda a: a.reshape((batch, n, block) + a.shape[2:])  # [B, n, block, H, D]
    with_previous = lambda a: jnp.concatenate(  # [B, n, 2 * block, H, D]
        [jnp.pad(a[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0), (0, 0))), a], axis=2)
    k, v = with_previous(split(k)), with_previous(split(v))
    # Query i of block b sits at b * block + i, key j of its window at (b - 1) * block + j.
    i, j, b = jnp.arange(block)[:, None], jnp.arange(2 * block)[None, :], jnp.arange(n)
    mask = (j <= i + block)[None] & ((b[:, None, None] > 0) | (j >= block)[None])  # [n, bl, 2bl]
    mask = jnp.broadcast_to(mask[None, :, None], (batch, n, 1, block, 2 * block))
    flat = lambda a: a.reshape((batch * n,) + a.shape[2:])
    out = jax.nn.dot_product_attention(flat(split(q)), flat(k), flat(v), mask=flat(mask))
    return self.out(out.reshape(q.shape))  # [B, T, D]


class Mlp(nn.Module):
  """Dense -> GELU -> dense."""
  features: int  # model width (input and output)
  hidden: int  # hidden width
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32  # parameter dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    h = Dense(self.hidden, name="wi", kernel_init=_partitioned(
        nn.initializers.lecun_normal(), ("embed", "mlp")), **kw)(x)
    return Dense(self.features, name="wo", kernel_init=_partitioned(
        nn.initializers.lecun_normal(), ("mlp", "embed")), **kw)(nn.gelu(h))


class Block(nn.Module):
  """Pre-LN block: self-attention, optional cross-attention, MLP; each a residual branch."""
  features: int  # model width
  num_heads: int  # attention heads
  head_dim: int  # width of each head
  mlp_dim: int  # MLP hidden width
  cross_attention: bool = False  # whether the block attends to a context
  dropout_rate: float = 0.0  # dropout on each residual branch (rng stream 'dropout')
  local_block: int = 0  # > 0: causal self-attention over the last 1-2 blocks of this many tokens
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32  # parameter dtype

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.self_norm = layer_norm("self_norm", self.param_dtype)
    self.self_attn = Attention(self.features, self.num_heads, self.head_dim, **kw)
    if self.cross_attention:
      self.cross_norm = layer_norm("cross_norm", self.param_dtype)
      self.cross_attn = Attention(self.features, self.num_heads, self.head_dim, **kw)
    self.mlp_norm = layer_norm("mlp_norm", self.param_dtype)
    self.mlp = Mlp(self.features, self.mlp_dim, **kw)
    self.dropout = nn.Dropout(self.dropout_rate)

  def cross_kv(self, context: jax.Array) -> KV:
    """Keys/values of the context [B, S, Dc] for this block's cross-attention."""
    return self.cross_attn.project_kv(context.astype(self.dtype))

  def _norm(self, norm: nn.LayerNorm, x: jax.Array) -> jax.Array:
    return norm(x).astype(self.dtype)

  def _rest(self, x, cross_kv, deterministic):
    """Cross-attention (if any) and MLP branches."""
    if self.cross_attention:
      if cross_kv is None:
        raise ValueError("this block has cross-attention: pass cross_kv")
      h = self.cross_attn.attend(self._norm(self.cross_norm, x), cross_kv)
      x = x + self.dropout(h, deterministic=deterministic)
    h = self.mlp(self._norm(self.mlp_norm, x))
    x = x + self.dropout(h, deterministic=deterministic)
    return nn.with_logical_constraint(x, ACTIVATION_AXES)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None, cross_kv: KV | None = None,
               *, deterministic: bool = True) -> jax.Array:
    if self.local_block:
      if mask is not None:
        raise ValueError("local_block attention is causal by construction: pass no mask")
      h = self.self_attn.attend_local(self._norm(self.self_norm, x), self.local_block)
    else:
      h = self.self_attn(self._norm(self.self_norm, x), mask)
    x = x + self.dropout(h, deterministic=deterministic)
    return self._rest(x, cross_kv, deterministic)

  def decode(self, x: jax.Array, cache: dict[str, jax.Array], index: jax.Array,
             cross_kv: KV | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """x [B, n, D] at positions index .. index+n-1; returns (y, cache with them written)."""
    h = self._norm(self.self_norm, x)
    k, v = self.self_attn.project_kv(h)  # [B, n, heads, head_dim]
    start = (0, index, 0, 0)
    cache = {"k": jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start),
             "v": jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)}
    cache = {name: nn.with_logical_constraint(a, CACHE_AXES) for name, a in cache.items()}
    q_positions = index + jnp.arange(x.shape[1])
    k_positions = jnp.arange(cache["k"].shape[1])
    mask = (local_causal_mask(q_positions, k_positions, self.local_block) if self.local_block
            else causal_mask(q_positions, k_positions))
    x = x + self.self_attn.attend(h, (cache["k"], cache["v"]), mask)
    return self._rest(x, cross_kv, deterministic=True), cache


class Transformer(nn.Module):
  """A stack of pre-LN blocks with a final LayerNorm (its output is float32)."""
  num_layers: int  # blocks
  features: int  # model width
  num_heads: int  # attention heads
  head_dim: int  # width of each head
  mlp_dim: int  # MLP hidden width
  cross_attention: bool = False  # blocks attend to a context (pass `cross_kv`)
  dropout_rate: float = 0.0  # residual dropout (rng stream 'dropout')
  local_block: int = 0  # > 0: block-local causal self-attention (see `Attention.attend_local`)
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32  # parameter dtype

  def setup(self):
    self.blocks = [
        Block(self.features, self.num_heads, self.head_dim, self.mlp_dim, self.cross_attention,
              self.dropout_rate, self.local_block, self.dtype, self.param_dtype,
              name=f"block{i}")
        for i in range(self.num_layers)]
    self.final_norm = layer_norm("final_norm", self.param_dtype)

  def cross_kv(self, context: jax.Array) -> list[KV]:
    """Per-layer cross-attention keys/values of context [B, S, Dc]: compute once, reuse."""
    return [block.cross_kv(context) for block in self.blocks]

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None,
               cross_kv: Sequence[KV] | None = None, deterministic: bool = True) -> jax.Array:
    """x [B, T, D] -> [B, T, D]; mask broadcasts to [B, heads, T, T] (None: bidirectional)."""
    x = nn.with_logical_constraint(x.astype(self.dtype), ACTIVATION_AXES)
    for i, block in enumerate(self.blocks):
      x = block(x, mask, None if cross_kv is None else cross_kv[i], deterministic=deterministic)
    return self.final_norm(x)

  def decode(self, x: jax.Array, cache: Cache, index: jax.Array,
             cross_kv: Sequence[KV] | None = None) -> tuple[jax.Array, Cache]:
    """Causal step: x [B, n, D] at positions index .. index+n-1 -> (y [B, n, D], cache)."""
    x = nn.with_logical_constraint(x.astype(self.dtype), ACTIVATION_AXES)
    new_cache = []
    for i, block in enumerate(self.blocks):
      x, layer_cache = block.decode(x, cache[i], index,
                                    None if cross_kv is None else cross_kv[i])
      new_cache.append(layer_cache)
    return self.final_norm(x), new_cache

  def init_cache(self, batch: int, length: int) -> Cache:
    """A zero KV cache for `length` positions (reads only fields: works on an unbound module)."""
    return init_cache(self.num_layers, batch, length, self.num_heads, self.head_dim, self.dtype)


def init_cache(num_layers: int, batch: int, length: int, num_heads: int, head_dim: int,
               dtype: Dtype = jnp.float32) -> Cache:
  """A zero KV cache: per layer {'k', 'v'}, each [batch, length, num_heads, head_dim]."""
  shape = (batch, length, num_heads, head_dim)
  return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
          for _ in range(num_layers)]
