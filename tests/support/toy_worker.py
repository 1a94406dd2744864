"""One process of a multi-process toy run (tests/integration/test_multiprocess.py, checkpoint portability).

    python tests/support/toy_worker.py WORKDIR NUM_STEPS OUT_DIR --coordinator_address=HOST:PORT \
        --num_processes=N --process_id=I

Restores the latest checkpoint in WORKDIR onto this process group's devices (mesh data=-1 x
fsdp=2), writes the restored state gathered from all processes to OUT_DIR/restored.npz, trains
on to NUM_STEPS with `loop.run` (which resumes from that same checkpoint and saves at the
end from all processes) and writes the final state to OUT_DIR/final.npz (process 0 writes).
"""

import argparse
import os
import sys

import jax
from jax.experimental import multihost_utils
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nwt_jax.training import checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position
import toy  # pylint: disable=g-import-not-at-top,wrong-import-position

MESH = dict(data=-1, fsdp=2, model=1)


def flat(tree) -> dict[str, np.ndarray]:
  """{path: array} of a pytree, the names np.savez and the test compare by."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def config(num_steps: int):
  c = toy.make_config(num_steps=num_steps, checkpoint_every=num_steps, eval_every=0)
  c.mesh = MESH
  return c


def _gathered(state) -> dict[str, np.ndarray]:
  return flat(multihost_utils.process_allgather(state, tiled=True))


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("num_steps", type=int)
  parser.add_argument("out_dir")
  parser.add_argument("--coordinator_address")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  args = parser.parse_args()
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  c = config(args.num_steps)
  _, init_state, shardings, _, _ = toy.setup(c)
  with checkpoint.Checkpointer(args.workdir, c) as ckpt:
    restored, _ = ckpt.restore(checkpoint.abstract_like(jax.eval_shape(init_state), shardings))
  restored = _gathered(restored)
  # A recording writer: no TensorBoard (and so no TensorFlow import) in these processes.
  final = _gathered(toy.train(c, args.workdir, writer=toy.RecordingWriter(),
                              process_index=jax.process_index(),
                              process_count=jax.process_count()))
  if jax.process_index() == 0:
    np.savez(os.path.join(args.out_dir, "restored.npz"), **restored)
    np.savez(os.path.join(args.out_dir, "final.npz"), **final)


if __name__ == "__main__":
  main()
