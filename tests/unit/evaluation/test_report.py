"""The report page renders in a real headless browser: every video and image on it loads, none
is missing, and a screenshot is not blank; and the report's pure parts (curve groups)."""

import html
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from nwt_jax.data import video_io
from nwt_jax.evaluation import report
from nwt_jax.training import metric_writer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--autoplay-policy=no-user-gesture-required", "--virtual-time-budget=20000"]


def _chromium(page, *args):
  if CHROMIUM is None:
    pytest.fail("chromium is not installed: `make test` installs Debian's chromium package "
                "(tools/install_chromium.sh)")
  return subprocess.run([CHROMIUM, *_FLAGS, f"--user-data-dir={page.parent / '.chromium'}",
                         *args, page.as_uri()],
                        capture_output=True, text=True, timeout=120, check=False)


def _media(proc) -> list[dict]:
  match = re.search(r'data-media="([^"]*)"', proc.stdout)
  assert match, f"the page never finished its media check: {proc.stderr[-2000:]}"
  return json.loads(html.unescape(match.group(1)))


def media_in_browser(page) -> list[dict]:
  """Loads `page` in headless Chromium and returns the page's own media check."""
  return _media(_chromium(page, "--dump-dom"))


def _not_blank(shot: np.ndarray) -> tuple[float, float]:
  """(share of pixels that are not near-white, pixel standard deviation) of a screenshot."""
  return float(np.mean(np.any(shot < 240, axis=-1))), float(shot.std())


def check_page(page, *, min_media: int = 1, width: int = 1200, height: int = 2400
               ) -> list[dict]:
  """Loads `page` in headless Chromium once: every <img>/<video> loads (none missing, each with
  pixels), and a screenshot of its top is not blank (text and pictures, not one colour).
  Returns the media check."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = page.parent / ".screenshot.png"
  proc = _chromium(page, "--dump-dom", "--hide-scrollbars", f"--window-size={width},{height}",
                   f"--screenshot={path}")
  media = _media(proc)
  assert len(media) >= min_media, media
  assert all(m["ok"] for m in media), [m for m in media if not m["ok"]]
  share, std = _not_blank(np.asarray(Image.open(path).convert("RGB")))
  assert share > 0.02 and std > 10, (share, std)
  return media


def test_report_renders_and_its_media_load(tmp_path):
  frames = np.random.default_rng(0).integers(0, 255, (20, 64, 56, 3)).astype(np.uint8)
  video_io.write_video(str(tmp_path / "sample.mp4"), frames, fps=30,
                       audio=np.zeros(16000, np.float32))
  report.save_png(str(tmp_path / "grid.png"), report.grid([frames[:4], frames[4:8]]))
  report.plot_curves(str(tmp_path / "curves.png"),
                     {"loss": (np.arange(10), np.linspace(1, 0, 10))}, title="t")
  report.write_html(str(tmp_path / "report.html"), title="t", intro="i", sections=[
      report.Section("Metrics", table=[{"name": "psnr", "value": "27.1", "bar": ">= 26",
                                        "status": "pass"}]),
      report.Section("Videos", "text", videos=[("sample", "sample.mp4")]),
      report.Section("Images", images=[("grid", "grid.png"), ("curves", "curves.png")],
                     pre="{}")])
  page = (tmp_path / "report.html").read_text()
  assert page.index("<h2>Metrics") < page.index("<h2>Videos") < page.index("<h2>Images")
  assert "<tr class='pass'><td>psnr</td><td>27.1</td>" in page
  media = check_page(tmp_path / "report.html", min_media=3, height=900)
  assert [m["src"] for m in media] == ["sample.mp4", "grid.png", "curves.png"]
  assert (media[0]["width"], media[0]["height"]) == (56, 64)
  assert (media[1]["width"], media[1]["height"]) == (4 * 56 + 6, 2 * 64 + 2)


def test_a_missing_file_is_reported_as_not_loaded(tmp_path):
  report.write_html(str(tmp_path / "report.html"), title="t", intro="i", sections=[
      report.Section("Missing", videos=[("gone", "gone.mp4")], images=[("gone", "gone.png")])])
  media = media_in_browser(tmp_path / "report.html")
  assert [m["ok"] for m in media] == [False, False]


def test_a_blank_page_fails_the_screenshot_check(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  (tmp_path / "blank.html").write_text("<html><body></body></html>")
  _chromium(tmp_path / "blank.html", "--window-size=600,400", f"--screenshot={tmp_path / 's.png'}")
  assert _not_blank(np.asarray(Image.open(tmp_path / "s.png").convert("RGB"))) == (0.0, 0.0)


def test_tensorboard_gets_the_images(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  image = np.random.default_rng(0).integers(0, 256, (20, 30, 3)).astype(np.uint8)
  writer = metric_writer.create_writer(str(tmp_path))
  writer.write_scalars(5, {"eval/psnr": 20.5})
  writer.write_images(5, {"eval/reconstructions": image})
  writer.close()
  values = [(e.step, v) for e in report._events(str(tmp_path)) for v in e.summary.value]
  images = [(step, v) for step, v in values if v.HasField("image")]
  assert [(step, v.tag) for step, v in images] == [(5, "eval/reconstructions")]
  decoded = np.asarray(Image.open(io.BytesIO(images[0][1].image.encoded_image_string)))
  np.testing.assert_array_equal(decoded, image)
  assert (images[0][1].image.height, images[0][1].image.width) == (20, 30)
  assert report.read_scalars(str(tmp_path))["eval/psnr"][1].tolist() == [20.5]


def test_every_logged_scalar_falls_in_one_group():
  groups = {tag: report.group_of(tag) for tag in (
      "train/loss", "train/l1", "train/kl", "train/lr", "train/g_adv", "train/d_loss",
      "train/fm", "train/d_grad_norm", "train/adv_scale", "eval/psnr", "eval/nll",
      "steps_per_sec", "train/g_grad_norm")}
  assert groups == {
      "train/loss": "losses", "train/l1": "losses", "train/kl": "losses",
      "train/lr": "learning rate", "train/g_adv": "adversarial", "train/d_loss": "adversarial",
      "train/fm": "adversarial", "train/d_grad_norm": "adversarial",
      "train/adv_scale": "adversarial", "eval/psnr": "eval", "eval/nll": "eval",
      "steps_per_sec": "other", "train/g_grad_norm": "other"}
