"""A training run's workdir: created and checked before any compilation, and removed again when
the run failed on bad input before writing a checkpoint (so no partial output remains)."""

import os

from etils import epath
import jax

from nwt_jax import errors


def prepare(workdir: str) -> bool:
  """Creates `workdir` (any epath: local or gs://) if needed and checks that it can be
  written, before any compilation; returns whether this call created it."""
  path = epath.Path(workdir)
  if path.exists() and not path.is_dir():
    raise errors.InvalidInput(f"--workdir={workdir} is a file, not a directory")
  created = not path.exists()
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_test.{jax.process_index()}.{os.getpid()}"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise errors.InvalidInput(
        f"--workdir={workdir} cannot be written: {e.strerror or e}") from None
  return created


def remove_if_no_checkpoint(workdir: str) -> None:
  """Deletes a workdir that holds no finished checkpoint (what a run that failed on bad input
  leaves: an events file, an empty checkpoints directory), so no partial output remains."""
  path = epath.Path(workdir)
  checkpoints = path / "checkpoints"
  if checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()):
    return
  path.rmtree(missing_ok=True)
