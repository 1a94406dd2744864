"""Transformer blocks: masks, causality, KV-cache decoding, logical names, param count, dtype."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nwt_jax.models import transformer

D, HEADS, HEAD_DIM, MLP, CTX_DIM = 32, 4, 8, 48, 24


def _key(seed):
  return jax.random.key(seed, impl="rbg")


def _stack(**overrides):
  kw = dict(num_layers=2, features=D, num_heads=HEADS, head_dim=HEAD_DIM, mlp_dim=MLP,
            cross_attention=True)
  return transformer.Transformer(**{**kw, **overrides})


def _forward(model, x, context, mask):
  """Teacher-forced forward with cross-attention K/V from `context`."""
  return model(x, mask=mask, cross_kv=model.cross_kv(context))


def _inputs(batch=2, length=6, seed=0):
  x = jax.random.normal(_key(seed), (batch, length, D))
  context = jax.random.normal(_key(seed + 1), (batch, 5, CTX_DIM))
  return x, context


@functools.lru_cache(maxsize=None)
def _variables():
  x, context = _inputs()
  return jax.jit(functools.partial(_stack().init, method=_forward))(
      _key(2), x, context, None)


def test_causal_and_block_causal_masks():
  pos = jnp.arange(3)
  np.testing.assert_array_equal(transformer.causal_mask(pos, pos)[0, 0],
                                [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
  # A query at cache position 1 sees keys 0 and 1 of a 4-long cache.
  np.testing.assert_array_equal(transformer.causal_mask(jnp.array([1]), jnp.arange(4))[0, 0],
                                [[1, 1, 0, 0]])
  np.testing.assert_array_equal(transformer.block_causal_mask(4, 2)[0, 0],
                                [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]])


def test_local_causal_mask():
  pos = jnp.arange(6)
  # Block 2: a query sees its own block and the one before, never a later position.
  np.testing.assert_array_equal(transformer.local_causal_mask(pos, pos, 2)[0, 0],
                                [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                                 [1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]])


def test_block_local_attention_equals_the_dense_masked_one_and_its_cached_decoding():
  """`attend_local` (blocks against their predecessor) computes exactly attention under the dense
  `local_causal_mask`, and the KV-cache path applies the same mask."""
  local, dense = _stack(local_block=2), _stack()
  variables = _variables()  # the same parameters: local_block adds none
  x, context = _inputs()
  batch, length, _ = x.shape
  positions = jnp.arange(length)
  want = dense.apply(variables, x, context, transformer.local_causal_mask(positions, positions, 2),
                     method=_forward)
  got = local.apply(variables, x, context, None, method=_forward)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
  full = dense.apply(variables, x, context, transformer.causal_mask(positions, positions),
                     method=_forward)
  assert np.abs(np.asarray(got - full)).max() > 1e-3  # the window really cuts positions 0..1
  cross_kv = local.apply(variables, context, method=local.cross_kv)
  decode = jax.jit(functools.partial(local.apply, variables, method=local.decode))
  cache = local.init_cache(batch, length)
  outs = []
  for t in range(length):
    y, cache = decode(x[:, t:t + 1], cache, t, cross_kv)
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("block", [1, 2])
def test_causality_by_perturbation(block):
  model = _stack()
  variables = _variables()
  x, context = _inputs()
  length = x.shape[1]
  mask = transformer.block_causal_mask(length, block)
  apply = jax.jit(lambda x: model.apply(variables, x, context, mask, method=_forward))
  base = apply(x)
  for t in range(length):
    bumped = x.at[:, t].add(jax.random.normal(_key(t + 10), x[:, t].shape))
    changed = np.abs(np.asarray(apply(bumped) - base)).max(axis=(0, 2))  # [T]
    first_affected = (t // block) * block  # the first position of t's block
    np.testing.assert_array_equal(changed[:first_affected], 0.0)
    assert np.all(changed[first_affected:] > 1e-4), (t, changed)


def test_cached_decoding_equals_full_forward_and_ignores_stale_cache():
  model = _stack()
  variables = _variables()
  x, context = _inputs()
  batch, length, _ = x.shape
  positions = jnp.arange(length)
  full = model.apply(variables, x, context, transformer.causal_mask(positions, positions),
                     method=_forward)
  cross_kv = model.apply(variables, context, method=model.cross_kv)
  decode = jax.jit(functools.partial(model.apply, variables, method=model.decode))
  # A cache longer than the sequence, filled with garbage: entries past the index are never read.
  cache = jax.tree.map(lambda a: jax.random.normal(_key(5), a.shape) * 100,
                       model.init_cache(batch, length + 3))
  outs = []
  for start, n in ((0, 1), (1, 2), (3, 1), (4, 2)):  # one token and two-token chunks
    y, cache = decode(x[:, start:start + n], cache, start, cross_kv)
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=2e-5, rtol=1e-5)
  assert cache[0]["k"].shape == (batch, length + 3, HEADS, HEAD_DIM)


def _block_params(d, heads, head_dim, mlp, cross, ctx_dim):
  attn = 4 * d * heads * head_dim
  cross_attn = (2 * d + 2 * ctx_dim) * heads * head_dim + 2 * d if cross else 0
  return attn + cross_attn + 2 * d * mlp + 4 * d  # + self_norm and mlp_norm (scale, bias)


def test_parameter_count_and_logical_names():
  x, context = _inputs()
  boxed = jax.eval_shape(functools.partial(_stack().init, method=_forward), _key(0), x, context,
                         None)["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda a: isinstance(a, nn.LogicallyPartitioned))
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), leaf
    assert len(leaf.names) == leaf.value.ndim, leaf
  block = boxed["block0"]
  assert block["self_attn"]["query"]["kernel"].names == ("embed", "heads", "kv")
  assert block["cross_attn"]["value"]["kernel"].names == ("embed", "heads", "kv")
  assert block["self_attn"]["out"]["kernel"].names == ("heads", "kv", "embed")
  assert block["mlp"]["wi"]["kernel"].names == ("embed", "mlp")
  assert block["mlp"]["wo"]["kernel"].names == ("mlp", "embed")
  assert block["self_norm"]["scale"].names == ("norm",)
  count = sum(leaf.value.size for leaf in leaves)
  assert count == 2 * _block_params(D, HEADS, HEAD_DIM, MLP, True, CTX_DIM) + 2 * D


def test_bfloat16_compute_keeps_float32_params_and_norms():
  x, context = _inputs()
  variables = _variables()
  out32 = _stack().apply(variables, x, context, None, method=_forward)
  out16 = _stack(dtype=jnp.bfloat16).apply(variables, x, context, None, method=_forward)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(nn.unbox(variables)))
  assert out16.dtype == jnp.float32  # the final LayerNorm runs in float32
  np.testing.assert_allclose(out16, out32, atol=0.1)
  assert not np.allclose(out16, out32, atol=1e-5)  # it did compute in bfloat16
