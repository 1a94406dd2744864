"""Score trained models on held-out synthetic clips; prints (and writes) the metrics as JSON.

    python -m nwt_jax.evaluate --dvae_workdir=runs/demo/dvae --prior_workdir=runs/demo/prior \\
        [--num_clips=16 --num_frames=64 --first_clip=0] [sampling flags]

The reconstruction metrics come from `nwt_jax.evaluation.jobs.evaluate_reconstruction`, the
generation metrics (lipsync, style and episode control) from `evaluate_generation`, the
teacher-forced next-frame lipsync from `nwt_jax.evaluation.teacher_forced`, and with
--diagnostics the ceiling, loss-weight and code-stability figures of
`nwt_jax.evaluation.diagnostics`; the probe that
reads the synthetic world's truth back from frames is trained (about a minute) unless --probe
names a saved one.
"""

import json

from absl import flags
from etils import epath

from nwt_jax import cli
from nwt_jax.evaluation import diagnostics
from nwt_jax.evaluation import jobs
from nwt_jax.evaluation import teacher_forced
from nwt_jax.inference import generator
from nwt_jax.training import checkpoint

FLAGS = flags.FLAGS
cli.define_workdir_flags()
flags.DEFINE_string("probe", "", "Probe .npz (trained and saved there if missing; '' = train).")
flags.DEFINE_integer("num_clips", 16, "Held-out synthetic clips.")
flags.DEFINE_integer("first_clip", 0, "Index of the first one in the validation split (the "
                     "demo evaluates 0..15; tune sampling settings on others).")
flags.DEFINE_integer("num_frames", 64, "Frames per held-out clip (longer than a window).")
flags.DEFINE_bool("independent_windows", False, "Also report lipsync_r_independent_windows: "
                  "the copied-style videos with every window drawn afresh.")
flags.DEFINE_bool("diagnostics", False, "Also report where lipsync is lost: the probe's ceiling "
                  "on the clips and their reconstructions, the loss-weight shares, mouth-code "
                  "flips (nwt_jax.evaluation.diagnostics).")
flags.DEFINE_integer("traverse_dims", 0, "Style dimensions to traverse (0: all).")
flags.DEFINE_string("output", "", "Also write the metrics JSON here.")
cli.define_sampling_flags()


def main() -> None:
  cli.require("dvae_workdir", "prior_workdir")
  models = generator.load_models(FLAGS.dvae_workdir, FLAGS.prior_workdir)
  height, width = models.frame_size
  probe = jobs.load_or_train_probe(FLAGS.probe, height, width)
  clips = jobs.heldout_clips(FLAGS.num_clips, FLAGS.num_frames, height, width,
                             models.prior.num_episodes, first=FLAGS.first_clip)
  metrics, _ = jobs.evaluate_reconstruction(models, clips, probe=probe)
  options, opening = cli.sampling_settings(FLAGS.prior_workdir)
  generation, _ = jobs.evaluate_generation(
      models, probe, clips, seed=FLAGS.seed, options=options, opening=opening,
      independent_windows=FLAGS.independent_windows, traverse_dims=FLAGS.traverse_dims)
  metrics.update(generation)
  metrics.update(teacher_forced.teacher_forced_lipsync(models, probe, clips, options=options,
                                                       seed=FLAGS.seed))
  if FLAGS.diagnostics:
    loss = checkpoint.saved_config(FLAGS.prior_workdir).loss
    metrics.update(diagnostics.diagnose(models, probe, clips, change_weight=loss.change_weight,
                                        frame0_weight=loss.get("frame0_weight",
                                                               loss.change_weight)))
  text = json.dumps(metrics, indent=2, default=float)
  print(text)
  if FLAGS.output:
    epath.Path(FLAGS.output).write_text(text + "\n")


if __name__ == "__main__":
  cli.run(main, user_errors=(ValueError,))
