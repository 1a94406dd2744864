"""Mesh construction, logical-axis shardings, sharded init, batch placement, per-device memory."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from nwt_jax.training import sharding
import toy

MESH_222 = dict(data=2, fsdp=2, model=2)


def test_make_mesh_fills_one_axis_and_uses_auto_axis_types():
  mesh = sharding.make_mesh(dict(data=2, fsdp=-1, model=2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "model": 2}
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 3
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
  one = sharding.make_mesh(dict(data=-1, fsdp=1, model=1), devices=jax.devices()[:1])
  assert dict(one.shape) == {"data": 1, "fsdp": 1, "model": 1}


@pytest.mark.parametrize("sizes, message", [
    (dict(data=3, fsdp=1, model=1), "needs 3 devices but there are 8"),
    (dict(data=3, fsdp=-1, model=1), "8 devices are not divisible by 3"),
    (dict(data=-1, fsdp=-1, model=2), "at most one -1"),
    (dict(data=0, fsdp=8, model=1), "must be positive"),
])
def test_make_mesh_rejects_sizes_that_do_not_fit(sizes, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(sizes)


def _boxed_toy_state(config):
  """The toy's train state as the trainer's init returns it: abstract, logically boxed."""
  return jax.eval_shape(lambda: toy.create_state(
      toy.MLP(**config.toy), optax.adamw(1e-3), config, jax.random.key(0)))


def test_every_parameter_gets_a_spec_and_odd_dims_are_replicated():
  config = toy.make_config()
  boxed = _boxed_toy_state(config)
  assert sharding.unnamed_params(boxed.params) == []
  shardings = sharding.logical_shardings(boxed, sharding.make_mesh(MESH_222))
  specs = jax.tree.map(lambda s: s.spec, shardings.params)
  assert specs == {
      "Dense_0": {"kernel": P("fsdp", "model"), "bias": P("model")},
      # The 3 outputs: 'embed' -> fsdp (size 2) does not divide 3, so that dim is replicated.
      "Dense_1": {"kernel": P("model", None), "bias": P(None)},
  }
  adam = shardings.opt_state[0]  # adamw's moments are laid out like the parameters
  assert jax.tree.map(lambda s: s.spec, adam.mu) == specs
  assert adam.count.spec == P() and shardings.step.spec == P()


def test_unnamed_parameters_are_reported():
  class Unnamed(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(4)(x)

  params = jax.eval_shape(Unnamed().init, jax.random.key(0), jnp.zeros((1, 2)))["params"]
  assert sharding.unnamed_params(params) == ["['Dense_0']['bias']", "['Dense_0']['kernel']"]


def test_axis_dropped_only_where_it_does_not_divide():
  mesh = sharding.make_mesh(MESH_222)
  boxed = {
      "rows6": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((6, 4), jnp.float32),
                                       ("batch", "mlp")),
      "rows8": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((8, 3), jnp.float32),
                                       ("batch", "mlp")),
  }
  specs = jax.tree.map(lambda s: s.spec, sharding.logical_shardings(boxed, mesh))
  # 6 rows: data (2) divides 6, data x fsdp (4) does not -> data only; model (2) divides 4, not 3.
  assert specs == {"rows6": P("data", "model"), "rows8": P(("data", "fsdp"), None)}


def test_unknown_logical_name_is_an_error():
  boxed = {"w": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((4,), jnp.float32), ("embd",))}
  with pytest.raises(ValueError, match=r"\['embd'\] have no rule"):
    sharding.logical_shardings(boxed, sharding.make_mesh(MESH_222))


def test_sharded_init_creates_unboxed_state_in_its_shards():
  config = toy.make_config()
  config.mesh = MESH_222
  _, init_state, shardings, _, _ = toy.setup(config)
  state = init_state()
  kernel = state.params["Dense_0"]["kernel"]
  assert isinstance(kernel, jax.Array) and kernel.shape == (8, 16)
  assert kernel.sharding == shardings.params["Dense_0"]["kernel"]
  assert {s.data.shape for s in kernel.addressable_shards} == {(4, 8)}
  assert len(jax.tree.leaves(state)) == len(jax.tree.leaves(shardings))
  # Same values as an unsharded init from the same key.
  reference = nn.unbox(toy.create_state(toy.MLP(**config.toy), optax.adamw(1e-3), config,
                                        jax.random.key(config.seed)))
  np.testing.assert_array_equal(kernel, reference.params["Dense_0"]["kernel"])


def test_put_batch_shards_rows_over_data_and_fsdp():
  mesh = sharding.make_mesh(MESH_222)
  x = np.arange(8 * 5, dtype=np.float32).reshape(8, 5)
  batch = sharding.put_batch({"x": x}, mesh)
  assert batch["x"].sharding.spec == P(("data", "fsdp"))
  assert {s.data.shape for s in batch["x"].addressable_shards} == {(2, 5)}
  np.testing.assert_array_equal(batch["x"], x)
  with pytest.raises(ValueError, match="global batch size 6 is not divisible by data x fsdp = 4"):
    sharding.put_batch({"x": x[:6]}, mesh)


def _losses(config, devices, steps):
  _, init_state, _, step, _ = toy.setup(config, devices)
  mesh = sharding.make_mesh(config.mesh, devices)
  state, it, losses = init_state(), toy.Iterator(config), []
  for _ in range(steps):
    state, metrics = step(state, sharding.put_batch(next(it), mesh))
    losses.append(float(metrics["loss"]))
  return np.array(losses), jax.device_get(state.params)


def test_one_device_and_eight_devices_give_the_same_losses():
  config = toy.make_config()
  config.mesh = dict(data=1, fsdp=1, model=1)
  one, params_one = _losses(config, jax.devices()[:1], steps=5)
  config.mesh = MESH_222
  eight, params_eight = _losses(config, jax.devices(), steps=5)
  assert one[-1] < one[0]  # it trains
  np.testing.assert_allclose(eight, one, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               params_eight, params_one)


def test_param_and_optimizer_bytes_per_device_are_divided_by_fsdp_x_model():
  config = toy.make_config()
  config.mesh = MESH_222
  config.data.features, config.toy.hidden, config.toy.out = 128, 256, 128
  mesh, init_state, shardings, step, _ = toy.setup(config)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          jax.eval_shape(init_state), shardings)
  batch_sharding = sharding.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct((8, 128), jnp.float32, sharding=batch_sharding)
           for k in ("x", "y")}
  report = sharding.state_memory(step.lower(abstract, batch).compile(), abstract, batch, mesh)
  assert sharding.total_bytes(abstract) > 400_000  # params + 2 adam moments of ~33k floats
  assert report["ideal_bytes"] == sharding.total_bytes(abstract) / 4
  assert report["state_bytes"] <= 1.15 * report["ideal_bytes"], report
  assert report["state_bytes"] == sharding.bytes_per_device(abstract)
