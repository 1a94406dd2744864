"""The demo report renders in a real headless browser and every video and image on it loads."""

import html
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from nwt_jax.evaluation import report
from nwt_jax.data import video_io

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def media_in_browser(page) -> list[dict]:
  """Loads `page` in headless Chromium and returns the page's own media check."""
  if CHROMIUM is None:
    pytest.fail("chromium is not installed: `make test` installs Debian's chromium package "
                "(tools/install_chromium.sh)")
  proc = subprocess.run(
      [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
       "--no-first-run", "--disable-background-networking", "--disable-component-update",
       "--disable-sync", "--autoplay-policy=no-user-gesture-required",
       f"--user-data-dir={page.parent / '.chromium'}", "--virtual-time-budget=20000",
       "--dump-dom", page.as_uri()],
      capture_output=True, text=True, timeout=120, check=False)
  match = re.search(r'data-media="([^"]*)"', proc.stdout)
  assert match, f"the page never finished its media check: {proc.stderr[-2000:]}"
  return json.loads(html.unescape(match.group(1)))


def test_report_renders_and_its_media_load(tmp_path):
  frames = np.random.default_rng(0).integers(0, 255, (20, 64, 56, 3)).astype(np.uint8)
  video_io.write_video(str(tmp_path / "sample.mp4"), frames, fps=30,
                       audio=np.zeros(16000, np.float32))
  report.save_png(str(tmp_path / "grid.png"), report.grid([frames[:4], frames[4:8]]))
  report.plot_curves(str(tmp_path / "curves.png"),
                     {"loss": (np.arange(10), np.linspace(1, 0, 10))}, title="t")
  report.write_html(str(tmp_path / "report.html"), title="t", intro="i",
                    metrics=[{"name": "psnr", "value": "27.1", "bar": ">= 26", "status": "pass"}],
                    videos=[("sample", "sample.mp4")],
                    images=[("grid", "grid.png"), ("curves", "curves.png")], details={"a": 1})
  media = media_in_browser(tmp_path / "report.html")
  assert [m["src"] for m in media] == ["sample.mp4", "grid.png", "curves.png"]
  assert all(m["ok"] for m in media), media
  assert (media[0]["width"], media[0]["height"]) == (56, 64)
  assert (media[1]["width"], media[1]["height"]) == (4 * 56 + 6, 2 * 64 + 2)


def test_a_missing_file_is_reported_as_not_loaded(tmp_path):
  report.write_html(str(tmp_path / "report.html"), title="t", intro="i", metrics=[],
                    videos=[("gone", "gone.mp4")], images=[("gone", "gone.png")], details={})
  media = media_in_browser(tmp_path / "report.html")
  assert [m["ok"] for m in media] == [False, False]
