"""Checkpoints: a thin wrapper over orbax's `CheckpointManager`.

A checkpoint at step N holds three items: `state` (the train state after N steps, restorable onto
any mesh), `data` (the train iterator's position, a small JSON dict) and `config` (the run's config
as JSON). Saves are asynchronous; orbax writes each into a temporary directory and renames it when
complete, so an interrupted save is never seen as a checkpoint.

On resume the saved config is compared with the current one first: fields that fix the shapes or
the meaning of the saved state (model architecture, optimiser, data source, seed) must match, and a
mismatch is one error naming every differing field. Fields about how long, how often and where a
run goes may change (`MAY_DIFFER_ON_RESUME`).
"""

from collections.abc import Callable, Iterable, Mapping
import json
import os
import time
from typing import Any

from absl import logging
from etils import epath
import jax
import ml_collections
import orbax.checkpoint as ocp

from nwt_jax import errors

# Config fields (dotted prefixes) allowed to differ between a checkpoint and the resuming run.
MAY_DIFFER_ON_RESUME = (
    "train",  # num_steps, log/eval/checkpoint cadence, keep_checkpoints, K: how long and how often
    "mesh",  # checkpoints restore onto any mesh
    "dtype",  # compute dtype only; parameters are always float32
    "data.batch_size",  # global batch: changes with the device count
    "debug",  # fault injection
)
# Orbax saves a replicated array in slices, one per replica, so the replicas share the copy to the
# host; each slice is a jitted `lax.slice` compiled per shape and device. For the small arrays of
# a train state that is 20 compilations per parameter shape on 8 devices and ~20 s of a `tiny`
# prior's first save, to save microseconds of copying: arrays are sliced only when each replica's
# slice is at least 1 MiB.
MIN_REPLICA_SLICE_BYTES = 2 ** 20


def _register_array_handler() -> None:
  # Orbax logs a warning that this replaces its default handler: silenced for this one call
  # (without touching absl's verbosity, which the CLIs' flags set later).
  logger = logging.get_absl_logger()
  disabled, logger.disabled = logger.disabled, True
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(
            min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES), override=True)
  finally:
    logger.disabled = disabled


_register_array_handler()


class ConfigMismatchError(errors.UserError, ValueError):
  """The resuming run's config differs from its checkpoint's in a field that must match."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, Mapping):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


def _config_json(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config))


def check_config_compatible(saved: Mapping[str, Any], current: Mapping[str, Any], *,
                            may_differ: Iterable[str] = MAY_DIFFER_ON_RESUME,
                            where: str = "the checkpoint") -> None:
  """Raises ConfigMismatchError naming every field outside `may_differ` that differs."""
  saved, current = _flatten(_config_json(saved)), _flatten(_config_json(current))
  may_differ = tuple(may_differ)
  missing = object()
  diffs = []
  for key in sorted(saved.keys() | current.keys()):
    if any(key == f or key.startswith(f + ".") for f in may_differ):
      continue
    old, new = saved.get(key, missing), current.get(key, missing)
    if old != new:
      show = lambda v: "(absent)" if v is missing else repr(v)
      diffs.append(f"  {key}: {show(old)} in the checkpoint, {show(new)} now")
  if diffs:
    raise ConfigMismatchError(
        f"The config does not match {where}; these fields fix the saved state's shapes or "
        "meaning and must be equal:\n" + "\n".join(diffs) + "\nResume with the checkpoint's "
        "values, or start a new run in another --workdir. (Fields that may change on resume: "
        + ", ".join(may_differ) + ".)")


class CheckpointWriteError(errors.UserError, OSError):
  """A checkpoint could not be written (disk full, no permission); what it left is removed."""


class Checkpointer:
  """Saves and restores (state, data position, config) under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str | epath.PathLike,
               config: ml_collections.ConfigDict | Mapping[str, Any], *,
               max_to_keep: int | None = None, best_metric: str | None = None,
               best_mode: str = "min", may_differ: Iterable[str] = MAY_DIFFER_ON_RESUME,
               async_save: bool = True):
    """`max_to_keep` latest checkpoints are kept, or, with `best_metric`, the best ones by the
    metrics passed to `save` (checkpoints saved without metrics are kept as well)."""
    # Orbax wants absolute paths; a local workdir may be given relative to the current one.
    workdir = os.fspath(workdir)
    self.directory = epath.Path(workdir if "://" in workdir else os.path.abspath(workdir)
                                ) / "checkpoints"
    self._config = _config_json(config)
    self._may_differ = tuple(may_differ)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        best_fn=(lambda metrics: metrics[best_metric]) if best_metric else None,
        best_mode=best_mode,
        enable_async_checkpointing=async_save,
        create=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "data", "config"))
    self._pending = None  # the step of a save that may still be writing
    self._closed = False

  def latest_step(self) -> int | None:
    """The newest finalized checkpoint's step (unfinished saves are invisible), or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: Mapping[str, Any],
           metrics: Mapping[str, float] | None = None) -> bool:
    """Starts an asynchronous save; returns once the arrays are copied off the devices, so
    the caller may donate `state` to the next step right away."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(dict(data_state)),
                              config=ocp.args.JsonSave(self._config))
    metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
    self._wait_for_pending()  # a failed previous save is reported as its own step's failure
    self._pending = step
    try:
      return self._manager.save(step, args=args, metrics=metrics, force=True)
    except Exception as e:  # pylint: disable=broad-except  (re-raised by _discard_unfinished)
      self._discard_unfinished(e)

  def _wait_for_pending(self) -> None:
    if self._pending is None:
      return
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except  (re-raised by _discard_unfinished)
      self._discard_unfinished(e)
    self._pending = None

  def _finished_steps(self) -> list[int]:
    return sorted(int(p.name) for p in self.directory.iterdir()
                  if p.name.isdigit() and (p / "commit_success.txt").exists())

  def _unfinished(self, step: int) -> list[epath.Path]:
    # Locally orbax writes `<step>.orbax-checkpoint-tmp*` and renames it when complete; on GCS
    # it writes `<step>` and marks completion with commit_success.txt.
    paths = list(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
    final = self.directory / str(step)
    if final.exists() and not (final / "commit_success.txt").exists():
      paths.append(final)
    return paths

  def _remove_unfinished(self, step: int, quiet_seconds: float = 0.5,
                         timeout: float = 60.0) -> None:
    """Removes a failed save's files. Orbax gives no handle on that save's other writers
    (tensorstore may still be writing its arrays after the JSON item failed), so this removes
    until nothing has reappeared for `quiet_seconds`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      leftovers = self._unfinished(step)
      for path in leftovers:
        try:
          path.rmtree(missing_ok=True)
        except OSError:  # a writer added a file while it was being removed: go again
          pass
      if not leftovers:
        time.sleep(quiet_seconds)
        if not self._unfinished(step):
          return
      time.sleep(0.05)

  def _discard_unfinished(self, error: Exception) -> None:
    """Removes what the failed save of step `self._pending` wrote, so nothing half-written
    remains, then raises: CheckpointWriteError for an OSError (disk full, permissions: the
    user can fix it), the original error otherwise."""
    step, self._pending = self._pending, None
    # Orbax's other writer threads of that save may still be running: stop them before removing
    # what they wrote (the manager is not used again; the error ends the run).
    self._close_manager(quietly=True)
    self._remove_unfinished(step)
    if not isinstance(error, OSError):
      raise error
    finished = self._finished_steps()
    kept = (f"checkpoint {finished[-1]} is intact" if finished
            else "no earlier checkpoint exists")
    raise CheckpointWriteError(
        f"Writing checkpoint {step} into {self.directory} failed "
        f"({error.strerror or error}); the unfinished checkpoint was removed and {kept}. Free "
        "space (or fix the directory) and rerun the same command to resume.") from error

  def saved_config(self, step: int | None = None) -> dict[str, Any]:
    step = self._step_or_latest(step)
    return self._manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))["config"]

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(state, data position) of `step` (default: latest), laid out as `abstract_state` says.

    `abstract_state` is a tree of `jax.ShapeDtypeStruct`s carrying the target shardings, so a
    checkpoint from one mesh restores onto any other. The config is checked first.
    """
    step = self._step_or_latest(step)
    check_config_compatible(self.saved_config(step), self._config, may_differ=self._may_differ,
                            where=f"the checkpoint {self.directory / str(step)}")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def _step_or_latest(self, step: int | None) -> int:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No finished checkpoint in {self.directory}.")
    return step

  def wait_until_finished(self) -> None:
    self._wait_for_pending()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's threads."""
    try:
      self._wait_for_pending()
    finally:
      self._close_manager()

  def _close_manager(self, quietly: bool = False) -> None:
    """Closes the manager once; `quietly` after a failed save, whose threads may fail too
    (that failure is already being reported)."""
    if self._closed:
      return
    self._closed = True
    try:
      self._manager.close()
    except Exception:  # pylint: disable=broad-except
      if not quietly:
        raise

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, exc_type, *exc) -> None:
    if exc_type is None:
      self.close()
      return
    try:  # already failing: report that error, not a pending save's
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass


def abstract_like(tree: Any, shardings: Any) -> Any:
  """`jax.ShapeDtypeStruct`s of `tree`'s (abstract) leaves with the given shardings."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def restore_frozen(workdir: str, model_name: str,
                   abstract_state: Callable[[ml_collections.ConfigDict], Any],
                   step: int | None = None) -> tuple[Any, ml_collections.ConfigDict]:
  """(state, config) of a finished run's checkpoint (`step`, default the latest), on one device.

  For using a trained model (tokenization, generation) rather than resuming it: the config is the
  one saved with the checkpoint, `abstract_state(config)` gives the state's abstract tree
  (`jax.eval_shape` of the trainer's init), and `model_name` must be the saved `config.model`.
  """
  if not (epath.Path(workdir) / "checkpoints").is_dir():
    raise errors.MissingInput(f"No checkpoints in {workdir}/checkpoints.")
  with Checkpointer(workdir, {}, async_save=False) as reader:
    step = reader.latest_step() if step is None else step
    if step is None:
      raise errors.MissingInput(f"No finished checkpoint in {workdir}/checkpoints.")
    config = ml_collections.ConfigDict(reader.saved_config(step))
  if config.get("model") != model_name:
    raise errors.InvalidInput(f"{workdir} holds a {config.get('model')!r} run, not a {model_name!r} one.")
  abstract = abstract_state(config)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  with Checkpointer(workdir, config, async_save=False) as reader:
    state, _ = reader.restore(abstract_like(abstract, jax.tree.map(lambda _: device, abstract)),
                              step)
  return state, config


def saved_config(workdir: str, step: int | None = None) -> ml_collections.ConfigDict:
  """The config saved with a run's checkpoint (`step`, default the latest), without its state."""
  with Checkpointer(workdir, {}, async_save=False) as reader:
    step = reader.latest_step() if step is None else step
    if step is None:
      raise errors.MissingInput(f"No finished checkpoint in {workdir}/checkpoints.")
    return ml_collections.ConfigDict(reader.saved_config(step))
