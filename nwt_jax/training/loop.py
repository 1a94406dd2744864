"""The training loop both trainers share: resume, steps, logging, eval, checkpoints, faults.

Both trainers (`training.dvae`, `training.prior`) have one shape: `create_train_state`,
`train_step`, `eval_step`, a cached `setup(config, ...)` that builds a `Setup` (mesh, model,
sharded initializer, jitted steps: `jit_steps`) and `train_and_evaluate(config, workdir)`, which
hands the `Setup`, a train iterator and an eval function to `run`. A step wraps its update in
`apply_if_finite`, so a non-finite loss or gradient leaves parameters and optimiser state
bitwise unchanged, and applies `inject_nan` to its loss so `config.debug.nan_at_step` can test
that path.

Progress lines (and the train metrics' TensorBoard points) come at steps 1, 2, 5, 10, 20, 50, ...
of a run (the 1-2-5 series) until `train.log_every` steps, then every `train.log_every` steps.

The state may be any `flax.struct.dataclass` with int32 scalar fields `step`, `nonfinite_skips` and
`nonfinite_streak` (`TrainState` below is one); typed PRNG keys stay out of it (derive the step's
key as `jax.random.fold_in(jax.random.key(config.seed), state.step)` inside the step).
"""

from collections.abc import Callable, Mapping
import dataclasses
import json
import signal
import threading
import time
from typing import Any, Protocol

from absl import logging
import flax
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import numpy as np
import optax

from nwt_jax import errors
from nwt_jax.training import checkpoint
from nwt_jax.training import metric_writer
from nwt_jax.training import sharding

GUARD_KEYS = ("nonfinite", "nonfinite_skips", "nonfinite_streak")


class NonFiniteError(errors.UserError, RuntimeError):
  """Too many consecutive steps had a non-finite loss or gradient."""


class DataIterator(Protocol):
  """The train iterator the loop reads: this process's rows of each global batch."""

  def __next__(self) -> dict[str, np.ndarray]: ...
  def get_state(self) -> dict[str, Any]: ...
  def set_state(self, state: Mapping[str, Any]) -> None: ...


@flax.struct.dataclass
class TrainState:
  """Parameters and optimiser state (any pytrees: the dVAE keeps generator and discriminator
  under two keys of each) with the counters `run` and `apply_if_finite` use."""
  step: jax.Array  # int32: updates attempted, = batches consumed
  params: Any
  opt_state: Any
  nonfinite_skips: jax.Array  # int32: updates skipped because of a non-finite loss or gradient
  nonfinite_streak: jax.Array  # int32: of which consecutive, ending at the latest step

  @classmethod
  def create(cls, params: Any, opt_state: Any) -> "TrainState":
    zero = jnp.zeros((), jnp.int32)
    return cls(step=zero, params=params, opt_state=opt_state, nonfinite_skips=zero,
               nonfinite_streak=zero)


def all_finite(*trees: Any) -> jax.Array:
  """True iff every element of every array in `trees` is finite, up to a global norm beyond
  float32's range (~1.8e19), which counts as non-finite too.

  It is `isfinite` of the global norm (a NaN or inf anywhere makes the norm one), not an `and`
  of per-array `isfinite(x).all()`: XLA fuses such a chain of cheap scalar ops into every
  consumer, so each parameter's select got its own copy of an L-array chain, which doubled the
  prior step's compile time; the norm's square root is not duplicated, and the per-array sums
  are the ones gradient clipping computes anyway.
  """
  return jnp.isfinite(optax.tree.norm(trees))


def apply_if_finite(state: Any, new_state: Any, loss: Any, grads: Any) -> tuple[Any, dict]:
  """`new_state` if `loss` and `grads` are finite, else `state` bitwise unchanged; the step and
  the non-finite counters advance either way. Returns (state, guard metrics for the step's
  metrics dict: `nonfinite` (0/1 this step), `nonfinite_skips`, `nonfinite_streak`)."""
  ok = all_finite(loss, grads)
  kept = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
  skips = state.nonfinite_skips + (~ok).astype(jnp.int32)
  streak = jnp.where(ok, 0, state.nonfinite_streak + 1)
  kept = kept.replace(step=state.step + 1, nonfinite_skips=skips, nonfinite_streak=streak)
  return kept, dict(nonfinite=(~ok).astype(jnp.int32), nonfinite_skips=skips,
                    nonfinite_streak=streak)


def inject_nan(loss: jax.Array, step: jax.Array, nan_at_step: int) -> jax.Array:
  """`loss`, times NaN at step `nan_at_step` (`config.debug.nan_at_step`; -1 = never).

  Apply it inside the loss function: the product makes the gradient NaN as well, and at every
  other step it multiplies by exactly 1.
  """
  if nan_at_step < 0:
    return loss
  return loss * jnp.where(step == nan_at_step, jnp.nan, 1.0).astype(loss.dtype)


# ----------------------------------------------------------------------------------------------
# What a trainer builds once from a config


@dataclasses.dataclass(frozen=True)
class Setup:
  """Mesh, model, sharded initializer and jitted steps, built once from a config by a trainer's
  cached `setup(config, ...)` (the dVAE's adds its discriminator)."""
  config: ml_collections.ConfigDict  # the fields the steps depend on
  mesh: Mesh
  model: Any
  init_state: Callable[[], Any]  # creates the sharded initial state (`sharded_initializer`)
  state_shardings: Any
  train_step: Callable  # jitted (state, batch) -> (state, metrics); donates state
  eval_step: Callable  # jitted (params, batch) -> metrics or outputs, replicated

  def lower_train_step(self, batch: Mapping[str, Any]):
    """The train step lowered for the abstract state and an abstract (or concrete) `batch`."""
    abstract = checkpoint.abstract_like(jax.eval_shape(self.init_state), self.state_shardings)
    return self.train_step.lower(abstract, batch)


class _InMesh:
  """A jitted function called (so traced) and lowered with its mesh set and the logical axis
  rules active, so the models' activation constraints (`nn.with_logical_constraint`) apply."""

  def __init__(self, jitted: Callable, mesh: Mesh):
    self._jitted, self._mesh = jitted, mesh

  def __call__(self, *args):
    with jax.set_mesh(self._mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
      return self._jitted(*args)

  def lower(self, *args):
    with jax.set_mesh(self._mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
      return self._jitted.lower(*args)


def jit_steps(mesh: Mesh, state_shardings: Any, train_step: Callable, eval_step: Callable,
              compiler_options: dict[str, Any] | None, *,
              constrain_activations: bool) -> tuple[Callable, Callable]:
  """`train_step(state, batch)` and `eval_step(params, batch)` jitted with explicit shardings:
  the state as `state_shardings` (donated by the train step), batches over the mesh's batch
  axes, outputs replicated. With `constrain_activations` they are traced under the mesh and
  the logical axis rules, so the models' activation constraints apply (the dVAE's steps; the
  prior's run without, as they always have: with them its losses on a 2 x 2 x 2 mesh drift
  from one device's by 1e-3 within 5 steps, a difference not yet examined)."""
  batch, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  train = jax.jit(train_step, in_shardings=(state_shardings, batch),
                  out_shardings=(state_shardings, replicated), donate_argnums=0,
                  compiler_options=compiler_options)
  evaluate = jax.jit(eval_step, in_shardings=(state_shardings.params, batch),
                     out_shardings=replicated, compiler_options=compiler_options)
  if not constrain_activations:
    return train, evaluate
  return _InMesh(train, mesh), _InMesh(evaluate, mesh)


def config_key(config: ml_collections.ConfigDict, fields: tuple[str, ...]) -> str:
  """`config`'s `fields` as sorted JSON (tuples as lists): a setup's cache key, and the config
  it is rebuilt from."""
  chosen = ml_collections.ConfigDict({k: config[k] for k in fields})
  return json.dumps(json.loads(chosen.to_json_best_effort()), sort_keys=True)


# ----------------------------------------------------------------------------------------------
# The loop


def logs_at(done: int, start: int, log_every: int) -> bool:
  """Whether a run that started at step `start` writes a progress line after step `done`:
  the 1-2-5 series of its own steps (start + 1, 2, 5, 10, 20, 50, ...) until `log_every` of
  them are done, then every `log_every` steps (<= 0: the series throughout)."""
  ran = done - start
  if ran <= 0:
    return False
  if log_every > 0 and ran >= log_every:
    return done % log_every == 0
  while ran % 10 == 0:
    ran //= 10
  return ran in (1, 2, 5)


class _Progress:
  """Steps/s and ETA over the steps since the last report, excluding eval and checkpoint time.
  The first report's rate includes the compilation of the steps."""

  def __init__(self, start: int, num_steps: int):
    self._num_steps = num_steps
    self._last_step, self._last_time, self._paused = start, time.perf_counter(), 0.0
    self.first = True  # the next report is the first (its time includes compilation)

  def exclude(self, seconds: float) -> None:
    self._paused += seconds

  def report(self, step: int, loss: float | None) -> tuple[float, str]:
    now = time.perf_counter()
    seconds = max(now - self._last_time - self._paused, 1e-9)
    rate = (step - self._last_step) / seconds
    self._last_step, self._last_time, self._paused = step, now, 0.0
    line = f"step {step}/{self._num_steps} ({100 * step / self._num_steps:.1f}%)"
    if loss is not None:
      line += f", loss {loss:.4g}"
    if self.first:
      self.first = False
      return rate, f"{line}, {rate:.2f} steps/s ({seconds:.1f} s, compilation included)"
    eta = (self._num_steps - step) / max(rate, 1e-9)
    return rate, (f"{line}, {rate:.2f} steps/s, "
                  f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")


class _SigtermFlag:
  """Turns SIGTERM (preemption, `kill`, scheduler time limit) into a flag the loop checks at step
  boundaries; all processes then stop at the same step."""

  def __init__(self):
    self.received = False
    self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True
    logging.warning("SIGTERM: saving a checkpoint after this step, then stopping.")

  def __enter__(self) -> "_SigtermFlag":
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def should_stop(self) -> bool:
    if jax.process_count() == 1:
      return self.received
    return bool(np.max(multihost_utils.process_allgather(np.int32(self.received))))


def _summarize(rows: list[dict[str, np.ndarray]]) -> dict[str, float]:
  """Means over the steps whose update was applied; the guard counters' latest values."""
  applied = [r for r in rows if not r["nonfinite"]]
  out = {k: float(np.mean([r[k] for r in applied])) if applied else float("nan")
         for k in rows[-1] if k not in GUARD_KEYS}
  out.update(nonfinite_skips=int(rows[-1]["nonfinite_skips"]),
             nonfinite_streak=int(rows[-1]["nonfinite_streak"]))
  return out


def _restore_or_init(ckpt: checkpoint.Checkpointer, init_state: Callable[[], Any],
                     state_shardings: Any, train_iter: DataIterator) -> Any:
  # Resume order (written down once, here):
  #   1. the checkpoint's config is compared with this run's (one error naming differing fields);
  #   2. the state is restored straight into this run's shardings (any mesh shape);
  #   3. the data iterator is set to the saved position, so its next batch is global batch
  #      number `state.step`, the one an uninterrupted run would see next;
  #   4. the loop continues at `state.step`; step s's randomness is fold_in(seed key, s), so the
  #      resumed steps repeat an uninterrupted run's exactly.
  # Without a checkpoint the state is created sharded and the iterator starts at batch 0.
  if ckpt.latest_step() is None:
    logging.info("No checkpoint in %s: starting from scratch.", ckpt.directory)
    return init_state()
  abstract = checkpoint.abstract_like(jax.eval_shape(init_state), state_shardings)
  state, data_state = ckpt.restore(abstract)
  train_iter.set_state(data_state)
  logging.info("Resumed from %s at step %d (data position %s).", ckpt.directory,
               int(state.step), data_state)
  return state


def run(config: ml_collections.ConfigDict, workdir: str, setup: Setup, train_iter: DataIterator,
        eval_fn: Callable[[Any, int], Mapping[str, float]] | None = None,
        writer=None) -> Any:
  """Restores or creates the state, trains to `config.train.num_steps`, returns the state.

  `setup` holds the mesh, the sharded initializer and the jitted `train_step`, whose metrics are
  scalars and include `apply_if_finite`'s guard metrics. `eval_fn(state, step)` returns scalar
  metrics, runs every `config.train.eval_every` steps and at the end, and must not keep `state`
  (the next step donates it). Optional `config.train.best_metric` (an `eval_fn` key) and
  `best_mode` ('min'|'max') make `keep_checkpoints` keep the best checkpoints instead of the
  latest. `writer` (clu MetricWriter interface) defaults to `metric_writer.create_writer(workdir)`.

  Returns early (after a checkpoint) on SIGTERM; raises NonFiniteError (after a checkpoint) when
  `config.train.max_consecutive_nonfinite` consecutive updates were skipped.
  """
  tc = config.train
  sharding.check_batch_divisible(config.data.batch_size, setup.mesh)
  own_writer = writer is None
  writer = metric_writer.create_writer(workdir) if own_writer else writer
  try:
    with checkpoint.Checkpointer(workdir, config, max_to_keep=tc.keep_checkpoints,
                                 best_metric=tc.get("best_metric"),
                                 best_mode=tc.get("best_mode", "min")) as ckpt:
      state = _restore_or_init(ckpt, setup.init_state, setup.state_shardings, train_iter)
      return _loop(tc, setup.mesh, state, setup.train_step, train_iter, eval_fn, ckpt, writer)
  finally:
    writer.flush()
    if own_writer:
      writer.close()


def _every(step: int, period: int) -> bool:
  """Whether a cadence of `period` steps (<= 0: only at the end) falls on `step`."""
  return period > 0 and step % period == 0


def _loop(tc, mesh, state, train_step, train_iter, eval_fn, ckpt, writer):
  start = int(jax.device_get(state.step))
  num_steps = tc.num_steps
  progress = _Progress(start, num_steps)
  last_saved, eval_metrics = start, None
  buffered = []  # metrics since the last log line, still on device (no per-step host sync)
  previous = None  # the last step's metrics: read one step late, so the host never waits

  def save(step):
    nonlocal last_saved
    if step != last_saved:
      t0 = time.perf_counter()
      ckpt.save(step, state, train_iter.get_state(), metrics=eval_metrics)
      last_saved = step
      progress.exclude(time.perf_counter() - t0)

  def check_guard(metrics, step, done):
    """Warns about a skipped update; stops after K in a row (the state still holds the last
    finite update's parameters: skipped steps leave them unchanged)."""
    skipped, total, streak = (int(metrics[k]) for k in GUARD_KEYS)
    if skipped:
      logging.warning("Step %d: non-finite loss or gradient, update skipped (%d so far, %d in a "
                      "row).", step, total, streak)
    if streak >= tc.max_consecutive_nonfinite:
      save(done)
      ckpt.wait_until_finished()
      raise NonFiniteError(
          f"{streak} consecutive steps (through step {step}) had a non-finite loss or gradient "
          f"(limit config.train.max_consecutive_nonfinite={tc.max_consecutive_nonfinite}). "
          f"Checkpoint {ckpt.directory / str(done)} holds the last finite update's parameters.")

  logging.info("Training steps %d..%d on mesh %s (the first includes compiling the step).",
               start, num_steps, dict(mesh.shape))
  with _SigtermFlag() as sigterm:
    for step in range(start, num_steps):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch = sharding.put_batch(next(train_iter), mesh)
        state, metrics = train_step(state, batch)
      if step == start and not set(GUARD_KEYS) <= set(metrics):
        raise KeyError(f"train_step's metrics lack {GUARD_KEYS}: wrap its update in "
                       "loop.apply_if_finite and merge the guard metrics it returns.")
      done = step + 1
      if previous is not None:
        check_guard(jax.device_get(previous), step - 1, done)
      previous = {k: metrics[k] for k in GUARD_KEYS}
      buffered.append(metrics)

      if logs_at(done, start, tc.log_every) or done == num_steps:
        summary = _summarize(jax.device_get(buffered))
        buffered = []
        compiled_in = progress.first  # a rate that includes compiling is not written
        rate, line = progress.report(done, summary.get("loss"))
        logging.info("%s", line)
        writer.write_scalars(done, {**({} if compiled_in else {"steps_per_sec": rate}),
                                    **{f"train/{k}": v for k, v in summary.items()}})
      if eval_fn is not None and (_every(done, tc.eval_every) or done == num_steps):
        t0 = time.perf_counter()
        eval_metrics = {k: float(v) for k, v in eval_fn(state, done).items()}
        writer.write_scalars(done, {f"eval/{k}": v for k, v in eval_metrics.items()})
        progress.exclude(time.perf_counter() - t0)
      stop = sigterm.should_stop()
      if _every(done, tc.checkpoint_every) or done == num_steps or stop:
        save(done)
      if stop:
        logging.warning("Stopped at step %d after SIGTERM; rerun to resume.", done)
        break
    if previous is not None:
      check_guard(jax.device_get(previous), done - 1, done)
  return state
