"""Device mesh, logical-axis rules, sharded state creation and batch placement.

Parameters name their dimensions with the logical names below (`nn.with_logical_partitioning`
in `models/layers.py`); activations get `nn.with_logical_constraint` at block boundaries. The rules
(t5x style: a short vocabulary, one rule each) map each logical name to mesh axes of the
(`data`, `fsdp`, `model`) mesh. A mesh axis that does not divide a dimension is dropped from it,
so odd sizes (3 RGB channels, 7 truth values) are simply replicated.

Train state is created from abstract shapes (flax `examples/lm1b/utils.py`, MaxText):
`jax.eval_shape` -> logical specs -> mesh shardings -> `jax.jit(init, out_shardings=...)`, so no
device ever holds the whole unsharded state.
"""

from collections.abc import Callable, Mapping
import math
from typing import Any

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from nwt_jax import errors

MESH_AXES = ("data", "fsdp", "model")

LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),  # examples (activations and batches) over data and fsdp
    ("embed", "fsdp"),  # a parameter's model-width dim: ZeRO-3 style over fsdp
    ("mlp", "model"),  # hidden widths (MLP, conv output channels): tensor parallel
    ("heads", "model"),  # attention / Memcodes heads
    ("vocab", "model"),  # code vocabulary (Memcodes codes, prior logits)
    ("kv", None),  # per-head feature dim
    ("length", None),  # sequence, time, and spatial activation dims
    ("norm", None),  # norm scales/biases and other small vectors: replicated
)

PyTree = Any


def make_mesh(mesh_config: Mapping[str, int], devices: list[jax.Device] | None = None) -> Mesh:
  """A (`data`, `fsdp`, `model`) mesh; one size may be -1 and is filled from the device count.

  Axis types are `Auto` (sharding propagated by XLA from the in/out shardings we give `jax.jit`);
  `jax.make_mesh` defaults to `Explicit` axes since jax 0.10, so the Mesh is built directly.
  """
  devices = jax.devices() if devices is None else list(devices)
  sizes = [int(mesh_config[name]) for name in MESH_AXES]
  described = " x ".join(f"{n}={s}" for n, s in zip(MESH_AXES, sizes))
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise errors.InvalidInput(f"Mesh {described}: sizes must be positive, with at most one -1.")
  if -1 in sizes:
    known = -math.prod(sizes)
    if len(devices) % known:
      raise errors.InvalidInput(f"Mesh {described}: {len(devices)} devices are not divisible by {known}.")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise errors.InvalidInput(
        f"Mesh {described} needs {math.prod(sizes)} devices but there are {len(devices)}; "
        "set one axis to -1 to fill it from the device count.")
  try:
    grid = mesh_utils.create_device_mesh(sizes, devices)
  except ValueError:  # Some TPU slices (v5e) fit the shape only by splitting a physical axis.
    grid = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
  return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _is_boxed(x: Any) -> bool:
  return isinstance(x, nn.Partitioned)


def unnamed_params(boxed_tree: PyTree) -> list[str]:
  """Paths of array leaves that carry no logical axis names (every parameter should have them)."""
  leaves = jax.tree_util.tree_leaves_with_path(boxed_tree, is_leaf=_is_boxed)
  return [jax.tree_util.keystr(path) for path, x in leaves if not _is_boxed(x)]


def _fit_to_shape(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Drops from each dimension the mesh axes whose size does not divide it."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    kept = []
    for axis in axes:
      if dim % (math.prod(mesh.shape[a] for a in kept) * mesh.shape[axis]) == 0:
        kept.append(axis)
    fitted.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return P(*fitted)


def logical_shardings(boxed_tree: PyTree, mesh: Mesh,
                      rules=LOGICAL_AXIS_RULES) -> PyTree:
  """NamedShardings for a tree with `nn.LogicallyPartitioned` leaves (abstract or concrete).

  The result has the structure of the *unboxed* tree. Leaves without names (step counters,
  optimiser counts) are replicated; an unknown logical name is an error (typos would otherwise
  silently replicate a large weight).
  """
  known = {name for name, _ in rules}
  for x in jax.tree.leaves(boxed_tree, is_leaf=_is_boxed):
    if _is_boxed(x) and (unknown := set(filter(None, x.names)) - known):
      raise ValueError(f"Logical axis names {sorted(unknown)} have no rule; known: {sorted(known)}")
  logical_specs = nn.get_partition_spec(boxed_tree)
  mesh_shardings = nn.logical_to_mesh_sharding(logical_specs, mesh, rules)
  return jax.tree.map(lambda s, x: NamedSharding(mesh, _fit_to_shape(s.spec, x.shape, mesh)),
                      mesh_shardings, nn.unbox(boxed_tree))


def sharded_initializer(init_fn: Callable[..., PyTree], mesh: Mesh, *args,
                        rules=LOGICAL_AXIS_RULES) -> tuple[Callable[[], PyTree], PyTree]:
  """Shardings of `init_fn(*args)` and a thunk that creates it sharded (nothing is run yet).

  `init_fn` returns the train state with boxed (logically partitioned) parameters; the thunk
  returns it unboxed, each leaf created directly in its shards. Trainers jit their steps with the
  shardings first and only call the thunk when there is no checkpoint to restore.
  """
  shardings = logical_shardings(jax.eval_shape(init_fn, *args), mesh, rules)
  init = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)
  return (lambda: init(*args)), shardings


def create_sharded_state(init_fn: Callable[..., PyTree], mesh: Mesh, *args,
                         rules=LOGICAL_AXIS_RULES) -> tuple[PyTree, PyTree]:
  """The unboxed state `init_fn(*args)` created in its shards, and its shardings."""
  init, shardings = sharded_initializer(init_fn, mesh, *args, rules=rules)
  return init(), shardings


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of scalars such as a step's metrics."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches: leading (example) dim over `data` x `fsdp`, replicated over `model`."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def batch_not_divisible(batch_size: int, ways: int, what: str = "data.batch_size") -> str:
  return (f"{what}: global batch size {batch_size} is not divisible by data x fsdp = {ways} "
          f"(the mesh's batch axes); use a multiple of {ways}.")


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str = "data.batch_size") -> None:
  """Raises InvalidInput unless a global batch of `batch_size` rows splits over the mesh's
  batch axes (checked before compiling, so the user learns it in seconds)."""
  ways = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % ways:
    raise errors.InvalidInput(batch_not_divisible(batch_size, ways, what))


def put_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows of a global batch -> global arrays sharded by `batch_sharding`."""
  sharding = batch_sharding(mesh)
  ways = mesh.shape["data"] * mesh.shape["fsdp"]
  out = {}
  for key, rows in local_batch.items():
    global_rows = rows.shape[0] * jax.process_count()
    if global_rows % ways:
      raise errors.InvalidInput(batch_not_divisible(global_rows, ways, f"batch {key!r}"))
    out[key] = jax.make_array_from_process_local_data(sharding, rows)
  return out


def bytes_per_device(tree: PyTree) -> int:
  """Bytes of one device's shard of every (abstract) array in a tree with NamedShardings."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def total_bytes(tree: PyTree) -> int:
  """Bytes of a tree of (abstract) arrays, unsharded."""
  return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def state_memory(compiled_step, state: PyTree, batch: PyTree, mesh: Mesh) -> dict[str, float]:
  """Per-device memory of a compiled `step(state, batch)`, from its `memory_analysis()`.

  `state_bytes` (parameters + optimiser state on one device) is the step's argument size minus the
  batch's shard; `ideal_bytes` is the fully sharded total / (fsdp x model), so `ratio` near 1 means
  the state is spread over every parameter-sharding device (issue 4's bar: <= 1.15).
  """
  stats = compiled_step.memory_analysis()
  state_bytes = stats.argument_size_in_bytes - bytes_per_device(batch)
  ideal = total_bytes(state) / (mesh.shape["fsdp"] * mesh.shape["model"])
  return dict(state_bytes=state_bytes, ideal_bytes=ideal, ratio=state_bytes / ideal,
              temp_bytes=stats.temp_size_in_bytes, output_bytes=stats.output_size_in_bytes)
