"""A toy trainer for the infrastructure tests: a 2-layer MLP regression with logically partitioned
parameters, adamw, and a data iterator with the loop's iterator interface. It is wired as the real
trainers are (sharded init, jitted step with explicit shardings, `loop.run`)."""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from nwt_jax.training import sharding
from nwt_jax.training import loop


def get_config() -> ml_collections.ConfigDict:
  """For `python -m nwt_jax.train --config=tests/support/toy.py` in the entry-point test."""
  return make_config()


def make_config(**train) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = "toy"
  config.seed = 0
  config.dtype = "float32"
  config.mesh = dict(data=1, fsdp=-1, model=1)
  config.data = dict(source="toy", batch_size=8, features=8)
  config.toy = dict(hidden=16, out=3)  # architecture: must match on resume
  config.optim = dict(lr=3e-2, weight_decay=1e-4)
  config.train = dict(num_steps=20, log_every=5, eval_every=10, checkpoint_every=10,
                      keep_checkpoints=3, eval_batches=1, max_consecutive_nonfinite=3)
  config.train.update(train)
  config.debug = dict(nan_at_step=-1)
  return config


class MLP(nn.Module):
  hidden: int = 16  # hidden width
  out: int = 3  # outputs (3: not divisible by any mesh axis, so it must fall back to replication)

  @nn.compact
  def __call__(self, x):
    named = nn.with_logical_partitioning
    x = nn.Dense(self.hidden, kernel_init=named(nn.initializers.lecun_normal(), ("embed", "mlp")),
                 bias_init=named(nn.initializers.zeros, ("mlp",)))(x)
    x = nn.gelu(x)
    return nn.Dense(self.out, kernel_init=named(nn.initializers.lecun_normal(), ("mlp", "embed")),
                    bias_init=named(nn.initializers.zeros, ("norm",)))(x)


class Iterator:
  """Global batch k is a pure function of (seed, k); this process gets its rows of it."""

  def __init__(self, config, *, process_index=0, process_count=1, nan_from=None, hook=None):
    self._batch_size, self._features = config.data.batch_size, config.data.features
    self._out, self._seed = config.toy.out, config.seed
    self._rows = slice(process_index * self._batch_size // process_count,
                       (process_index + 1) * self._batch_size // process_count)
    self._nan_from, self._hook = nan_from, hook  # fault injection for the tests
    self.step = 0

  def __next__(self):
    if self._hook:
      self._hook(self.step)
    rng = np.random.default_rng([self._seed, self.step])
    x = rng.normal(size=(self._batch_size, self._features)).astype(np.float32)
    y = np.sin(x[:, :self._out] * 2.0) + 0.1 * x[:, -self._out:]
    if self._nan_from is not None and self.step >= self._nan_from:
      x[:] = np.nan
    self.step += 1
    return dict(x=x[self._rows], y=y[self._rows].astype(np.float32))

  def get_state(self):
    return {"step": self.step}

  def set_state(self, state):
    self.step = int(state["step"])


def create_state(model, tx, config, rng):
  x = jnp.zeros((1, config.data.features), jnp.float32)
  params = model.init(rng, x)["params"]
  return loop.TrainState.create(params, tx.init(params))


def train_step(state, batch, *, model, tx, nan_at_step, rng):
  # Input noise: randomness that a resumed run must repeat exactly (step s uses fold_in(rng, s)).
  noise = jax.random.normal(jax.random.fold_in(rng, state.step), batch["x"].shape)

  def loss_fn(params):
    pred = model.apply({"params": params}, batch["x"] + 0.05 * noise)
    loss = jnp.mean(jnp.square(pred - batch["y"]))
    return loop.inject_nan(loss, state.step, nan_at_step)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state)
  state, guard = loop.apply_if_finite(state, new_state, loss, grads)
  return state, {"loss": loss, **guard}


def setup(config, devices=None):
  """(mesh, init_state, shardings, jitted step, model) as a trainer's train_and_evaluate makes.

  Cached per (the fields the step depends on, devices): tests running the toy several times
  compile it once.
  """
  fields = {k: config[k].to_dict() for k in ("mesh", "data", "toy", "optim", "debug")}
  return _setup(json.dumps(dict(fields, seed=config.seed)), tuple(devices or jax.devices()))


@functools.lru_cache(maxsize=None)
def _setup(config_json, devices):
  config = ml_collections.ConfigDict(json.loads(config_json))
  mesh = sharding.make_mesh(config.mesh, devices)
  model = MLP(**config.toy)
  tx = optax.adamw(config.optim.lr, weight_decay=config.optim.weight_decay)
  init = functools.partial(create_state, model, tx, config)
  init_state, shardings = sharding.sharded_initializer(init, mesh, jax.random.key(config.seed))
  step = jax.jit(
      functools.partial(train_step, model=model, tx=tx, nan_at_step=config.debug.nan_at_step,
                        rng=jax.random.key(config.seed + 1)),
      in_shardings=(shardings, sharding.batch_sharding(mesh)),
      out_shardings=(shardings, sharding.replicated(mesh)),
      donate_argnums=0)
  return mesh, init_state, shardings, step, model


class RecordingWriter:
  """Keeps what `run` writes: {step: {name: value}}."""

  def __init__(self):
    self.scalars = {}

  def write_scalars(self, step, scalars):
    self.scalars.setdefault(step, {}).update(scalars)

  def flush(self):
    pass

  def close(self):
    pass


def train_and_evaluate(config, workdir):
  """What `nwt_jax.train` calls for `config.model == 'toy'` in the entry-point test."""
  return train(config, workdir, process_index=jax.process_index(),
               process_count=jax.process_count())


def train(config, workdir, devices=None, writer=None, eval_fn=None, **iterator_kwargs):
  """The toy's train_and_evaluate with test hooks: returns the final state."""
  mesh, init_state, shardings, step, model = setup(config, devices)
  s = loop.Setup(config=config, mesh=mesh, model=model, init_state=init_state,
                 state_shardings=shardings, train_step=step, eval_step=None)
  return loop.run(config, workdir, s, Iterator(config, **iterator_kwargs), eval_fn=eval_fn,
                  writer=writer)


def scalars(workdir) -> dict[int, dict[str, float]]:
  """What the runs in `workdir` wrote to TensorBoard, as `RecordingWriter.scalars` holds it."""
  from nwt_jax.evaluation import report  # pylint: disable=g-import-not-at-top
  out = {}
  for tag, (steps, values) in report.read_scalars(str(workdir)).items():
    for step, value in zip(steps, values):
      out.setdefault(int(step), {})[tag] = float(value)
  return out
