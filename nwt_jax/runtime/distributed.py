"""Multi-process start-up: several processes that must form one JAX system call
`jax.distributed.initialize` before anything else touches the devices."""

import os

import jax


def multiprocess_environment() -> bool:
  """True where the environment launched several processes that must form one JAX system
  (`NWT_DISTRIBUTED=1`, set by the scripts in launch/, forces it)."""
  env = os.environ
  return bool(env.get("NWT_DISTRIBUTED") == "1"
              or env.get("JAX_COORDINATOR_ADDRESS")
              or int(env.get("SLURM_NTASKS", "1")) > 1
              or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
              or "," in env.get("TPU_WORKER_HOSTNAMES", ""))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins the processes into one JAX system where the flags or the environment ask for it."""
  if coordinator_address or multiprocess_environment():
    # CPU processes need gloo for cross-process collectives; other backends ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
