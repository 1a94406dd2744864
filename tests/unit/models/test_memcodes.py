"""Memcodes against an inline numpy transcription of nwt-pytorch's `Memcodes.forward`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nwt_jax.models import memcodes

DIM, HEADS, CODES = 32, 4, 16
D = DIM // HEADS


def torch_like_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
  """Arrays laid out like nwt-pytorch's Memcodes state dict (EinMix weight_shape 'h d c')."""
  rng = np.random.default_rng(seed)
  return {
      "codes": rng.standard_normal((HEADS, CODES, D)).astype(np.float32),
      "to_k.weight": rng.uniform(-D ** -0.5, D ** -0.5, (HEADS, D, D)).astype(np.float32),
      "to_v.weight": rng.uniform(-D ** -0.5, D ** -0.5, (HEADS, D, D)).astype(np.float32),
  }


def port(state_dict: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """The whole weight port: plain copies, no transposes."""
  return {"codes": jnp.asarray(state_dict["codes"]),
          "to_k": jnp.asarray(state_dict["to_k.weight"]),
          "to_v": jnp.asarray(state_dict["to_v.weight"])}


def reference_forward(x, sd, gumbel=None):
  """nwt-pytorch's forward in numpy: x [b, n, dim] -> (out [b, n, dim], indices [b, h, n]).

  `gumbel` [b, h, n, codes] replaces F.gumbel_softmax's noise (train mode); None is eval mode.
  """
  b, n, _ = x.shape
  q = x.reshape(b, n, HEADS, D).transpose(0, 2, 1, 3) * D ** -0.5  # 'b n (h d) -> b h n d'
  k = np.einsum("hnd,hdc->hnc", sd["codes"], sd["to_k.weight"])  # EinMix 'h n d -> h n c'
  v = np.einsum("hnd,hdc->hnc", sd["codes"], sd["to_v.weight"])
  logits = np.einsum("bhid,hjd->bhij", q, k)
  indices = np.argmax(logits if gumbel is None else logits + gumbel, axis=-1)
  attn = np.eye(CODES, dtype=np.float32)[indices]  # the forward value of hard gumbel-softmax
  out = np.einsum("bhij,hjd->bhid", attn, v)
  return out.transpose(0, 2, 1, 3).reshape(b, n, DIM), indices, logits


@pytest.fixture
def module():
  return memcodes.Memcodes(DIM, CODES, heads=HEADS, temperature=0.7)


def _x(seed=1, shape=(3, 10)):
  return np.random.default_rng(seed).standard_normal(shape + (DIM,)).astype(np.float32) * 2


def test_params_names_shapes_and_logical_axes(module):
  boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((2, DIM)),
                                             train=False))["params"]
  assert set(boxed) == {"codes", "to_k", "to_v"}
  assert boxed["codes"].value.shape == (HEADS, CODES, D)
  assert boxed["to_k"].value.shape == boxed["to_v"].value.shape == (HEADS, D, D)
  assert boxed["codes"].names == ("heads", "vocab", "kv")
  assert boxed["to_k"].names == boxed["to_v"].names == ("heads", "kv", None)
  params = nn.unbox(module.init(jax.random.key(0), jnp.zeros((2, DIM)), train=False))["params"]
  # torch's init: codes ~ N(0, 1), EinMix ~ U(-1/sqrt(d), 1/sqrt(d)).
  assert 0.8 < float(jnp.std(params["codes"])) < 1.2
  assert float(jnp.abs(params["to_k"]).max()) <= D ** -0.5


def test_eval_matches_reference_transcription(module):
  sd = torch_like_state_dict()
  x = _x()
  out, indices = module.apply({"params": port(sd)}, jnp.asarray(x), train=False)
  ref_out, ref_indices, _ = reference_forward(x, sd)
  assert out.shape == x.shape and indices.shape == (3, 10, HEADS) and indices.dtype == jnp.int32
  np.testing.assert_array_equal(indices, ref_indices.transpose(0, 2, 1))
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
  # Nontrivial check: the inputs use many different codes.
  assert len(np.unique(ref_indices)) > CODES // 2


def test_train_is_gumbel_max_with_the_module_noise(module):
  sd = torch_like_state_dict()
  x = _x(2)
  (out, indices), state = module.apply(
      {"params": port(sd)}, jnp.asarray(x), train=True, rngs={"gumbel": jax.random.key(3)},
      mutable=["intermediates"])
  gumbel = np.asarray(state["intermediates"]["gumbel"][0])  # [b, n, h, codes]
  ref_out, ref_indices, logits = reference_forward(x, sd, gumbel.transpose(0, 2, 1, 3))
  np.testing.assert_array_equal(indices, ref_indices.transpose(0, 2, 1))
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
  # The noise is what makes training differ from eval: some codes change.
  assert np.mean(ref_indices != logits.argmax(-1)) > 0.1
  # ... and it is standard Gumbel noise (mean = Euler's gamma, std = pi / sqrt(6)).
  assert abs(gumbel.mean() - 0.5772) < 0.05 and abs(gumbel.std() - np.pi / 6 ** 0.5) < 0.05


def test_train_samples_follow_softmax_of_logits():
  m = memcodes.Memcodes(4, 4, heads=1, temperature=0.5)
  params = {"codes": jnp.eye(4)[None],  # [1, 4, 4]
            "to_k": jnp.eye(4)[None], "to_v": jnp.eye(4)[None]}
  x = jnp.tile(jnp.array([[0.0, 1.0, 2.0, 3.0]]), (20000, 1))  # logits = x / 2
  _, indices = m.apply({"params": params}, x, train=True, rngs={"gumbel": jax.random.key(0)})
  freq = np.bincount(np.asarray(indices[:, 0]), minlength=4) / len(x)
  np.testing.assert_allclose(freq, jax.nn.softmax(jnp.arange(4.0) / 2), atol=0.015)


def test_decode_indices_equals_eval_out(module):
  params = nn.unbox(module.init(jax.random.key(0), jnp.zeros((1, DIM)), train=False))["params"]
  x = jnp.asarray(_x(4, (2, 5, 7)))
  out, indices = module.apply({"params": params}, x, train=False)
  assert indices.shape == (2, 5, 7, HEADS)
  decoded = module.apply({"params": params}, indices, method=module.decode_indices)
  np.testing.assert_array_equal(decoded, out)


def test_straight_through_gradient_reaches_input_and_codes(module):
  params = nn.unbox(module.init(jax.random.key(0), jnp.zeros((1, DIM)), train=False))["params"]
  x = jnp.asarray(_x(5))

  def loss(params, x, train):
    out, _ = module.apply({"params": params}, x, train=train, rngs={"gumbel": jax.random.key(1)})
    return jnp.sum(out ** 2)

  g_params, g_x = jax.grad(loss, argnums=(0, 1))(params, x, True)
  for g in [g_x, *jax.tree.leaves(g_params)]:
    assert np.all(np.isfinite(g)) and float(jnp.abs(g).max()) > 1e-4
  # Eval's argmax has no gradient path to the input: the Gumbel estimator is the only one.
  assert float(jnp.abs(jax.grad(loss, argnums=1)(params, x, False)).max()) == 0.0


def test_code_usage_stats():
  indices = jnp.array([[[0, 1], [1, 1]], [[2, 1], [3, 1]]])  # [2, 2, heads=2]
  counts = memcodes.code_counts(indices, num_codes=4)
  np.testing.assert_array_equal(counts, [[1, 1, 1, 1], [0, 4, 0, 0]])
  stats = memcodes.usage_stats(counts)
  np.testing.assert_allclose(stats["perplexity"], [4.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(stats["usage"], [1.0, 0.25])


def test_port_from_torch_einmix_module():
  # torch and einops come with the dev/bench extras that `make test` installs.
  import torch  # pylint: disable=g-import-not-at-top
  from einops.layers.torch import EinMix as einmix  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  to_k, to_v = (einmix("h n d -> h n c", weight_shape="h d c", h=HEADS, d=D, c=D)
                for _ in range(2))
  codes = torch.randn(HEADS, CODES, D)
  x = torch.randn(2, 9, DIM)
  with torch.no_grad():  # nwt-pytorch's eval forward, with the real EinMix layers
    q = x.reshape(2, 9, HEADS, D).permute(0, 2, 1, 3) * D ** -0.5
    logits = torch.einsum("bhid,hjd->bhij", q, to_k(codes))
    ref_indices = logits.argmax(dim=-1)
    attn = torch.nn.functional.one_hot(ref_indices, CODES).float()
    ref_out = torch.einsum("bhij,hjd->bhid", attn, to_v(codes)).permute(0, 2, 1, 3)
  sd = {"codes": codes.numpy(), "to_k.weight": to_k.state_dict()["weight"].numpy(),
        "to_v.weight": to_v.state_dict()["weight"].numpy()}
  out, indices = memcodes.Memcodes(DIM, CODES, heads=HEADS).apply(
      {"params": port(sd)}, jnp.asarray(x.numpy()), train=False)
  np.testing.assert_array_equal(indices, ref_indices.permute(0, 2, 1).numpy())
  np.testing.assert_allclose(out, ref_out.reshape(2, 9, DIM).numpy(), rtol=1e-5, atol=1e-5)
