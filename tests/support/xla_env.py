"""XLA_FLAGS for the tests' subprocesses: conftest's (the lowest compile effort, as the steps
there also run a few times) with the subprocess's own device count."""

import os
import re


def xla_flags(devices: int) -> str:
  inherited = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                     os.environ.get("XLA_FLAGS", ""))
  return f"--xla_force_host_platform_device_count={devices} {inherited.strip()}".strip()
