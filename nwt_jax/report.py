"""Write the HTML report of a run: training curves, code usage, the Memcodes explorer and, with a
prior and a probe, generation and its controls (docs/report.md). Prints the page's path.

    python -m nwt_jax.report --workdir=runs/demo          # a demo run (dvae/, prior/, ...)
    python -m nwt_jax.report --workdir=runs/dvae_tiny     # a dVAE workdir
    python -m nwt_jax.report --workdir=runs/prior_far [--probe=probe.npz] [sampling flags]
    python -m nwt_jax.report --workdir=runs/mine          # a footage run (nwt_jax.footage)

The page and its media go to WORKDIR/report/ (or --output). A demo run's report already holds
its generation measurements; for a prior workdir, --probe (or a probe.npz in the workdir) makes
the report measure generation on --num_clips held-out synthetic clips first
(`nwt_jax.evaluation.report.measure`, what the demo's evaluate stage runs).
"""

from absl import flags
from etils import epath

from nwt_jax import cli
from nwt_jax.evaluation import footage
from nwt_jax.evaluation import jobs
from nwt_jax.evaluation import report
from nwt_jax.inference import generator

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A demo run directory, a dVAE workdir or a prior workdir.")
flags.DEFINE_string("output", "", "Folder of the page and its media ('' = WORKDIR/report).")
flags.DEFINE_integer("num_clips", 16, "Held-out clips the code sections (and a measurement) use.")
flags.DEFINE_integer("num_frames", 64, "Frames per held-out clip.")
flags.DEFINE_string("probe", "", "Probe .npz: with a prior, measure generation first (trained "
                    "and saved there if missing; '' = the workdir's probe.npz, if any).")
flags.DEFINE_integer("traverse_dims", 0, "Style dimensions a measurement traverses (0: all).")
cli.define_sampling_flags()


def main() -> None:
  cli.require("workdir")
  run = report.find_run(FLAGS.workdir)
  out = epath.Path(FLAGS.output) if FLAGS.output else run.root / "report"
  probe = FLAGS.probe or (str(run.root / "probe.npz") if (run.root / "probe.npz").exists()
                          else "")
  if run.prior is not None and probe and (FLAGS.probe or not (out / report.MEASUREMENTS).exists()):
    models = generator.load_models(str(run.dvae), str(run.prior))
    height, width = models.frame_size
    options, opening = cli.sampling_settings(str(run.prior))
    report.measure(models, jobs.load_or_train_probe(probe, height, width),
                   jobs.heldout_clips(FLAGS.num_clips, FLAGS.num_frames, height, width,
                                      models.prior.num_episodes),
                   out, options=options, opening=opening, seed=FLAGS.seed,
                   traverse_dims=FLAGS.traverse_dims)
  # A footage run (python -m nwt_jax.footage) brings its own measured sections.
  finished_footage = all((run.root / f).exists() for f in ("stages.json", "metrics.json"))
  own = footage.report_sections(FLAGS.workdir) if finished_footage else ()
  page = report.build(FLAGS.workdir, output=str(out), num_clips=FLAGS.num_clips,
                      num_frames=FLAGS.num_frames, sections=own)
  print(page)


if __name__ == "__main__":
  cli.run(main)
