r"""LLM-as-judge over candidate outputs, with any run directory as the judge.

  python -m infer.judge --judge=runs/judge --candidates=a.jsonl,b.jsonl --mode=pairwise \
      --rubric=rubrics/helpfulness.md --out=OUT
  python -m infer.judge --judge=runs/judge --candidates=a.jsonl --mode=pointwise \
      --rubric=rubrics/helpfulness.md --out=OUT
  python -m infer.judge --judge=runs/rm --candidates=a.jsonl,b.jsonl --mode=pairwise --out=OUT

A reward-model run (config.json head="reward") judges by reward instead (infer/eval/
reward_judge.py): the higher reward wins (ties within --tie_margin); pointwise, the reward is
the score. --rubric, --template and the generation flags do not apply to it.

Candidates are jsonl rows {"id", "input" | "messages", "prediction"}; a system is named after
its file. Pairwise judging asks both orders of every pair. Writes OUT/judgements.jsonl (one row
per judged item, raw judge outputs included), OUT/scores.json (win rates or mean scores with
intervals, unparseable counts, position and length bias) and OUT/config.json.
"""

import os

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
  """Defines this CLI's flags (at run time, so that importing the module for its
  functions never clashes with another CLI's flags of the same name)."""
  flags.DEFINE_string("judge", None, "Run directory of the judge model.")
  flags.DEFINE_list("candidates", [], "Candidate jsonl files (pairwise: at least two).")
  flags.DEFINE_enum("mode", "pairwise", ["pairwise", "pointwise"], "Judging mode.")
  flags.DEFINE_string("rubric", None, "Rubric markdown (default rubrics/helpfulness.md).")
  flags.DEFINE_string("template", None, "Prompt template (default rubrics/<mode>.md).")
  flags.DEFINE_string("out", None, "Output directory.")
  flags.DEFINE_integer("max_new_tokens", 64, "Tokens the judge may write per verdict.")
  flags.DEFINE_integer("batch_size", 8, "Prompts per batch.")
  flags.DEFINE_string("chat_template", "", "Judge's chat template: '' = the run's own, 'raw', or "
                      "a name from model/chat.py.")
  flags.DEFINE_integer("bootstrap_samples", 1000, "Bootstrap resamples.")
  flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
  flags.DEFINE_float("tie_margin", 0.0, "Reward-model judge: a pair whose rewards differ by "
                     "less than this is a tie (0 = only equal rewards).")


def _system_names(paths) -> list[str]:
  names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  if len(set(names)) != len(names):
    names = [f"{i}:{n}" for i, n in enumerate(names)]
  return names


def run() -> dict:
  from infer.eval import data as data_lib
  from infer.eval import judge as judge_lib
  from infer.eval import reward_judge, runner

  if not FLAGS.judge:
    raise ValueError("give --judge=RUN_DIR, the run directory of the judge model")
  if not FLAGS.out:
    raise ValueError("give --out=DIR for judgements.jsonl, scores.json and config.json")
  paths = list(FLAGS.candidates)
  needed = 2 if FLAGS.mode == "pairwise" else 1
  if len(paths) < needed:
    raise ValueError(f"--mode={FLAGS.mode} needs at least {needed} --candidates file(s), got "
                     f"{len(paths)}")
  if reward_judge.is_reward_run(FLAGS.judge):
    return _run_reward(paths)
  rubric_path = FLAGS.rubric or os.path.join(judge_lib.RUBRICS_DIR, "helpfulness.md")
  template_path = FLAGS.template or os.path.join(judge_lib.RUBRICS_DIR, f"{FLAGS.mode}.md")
  rubric = judge_lib.read_rubric(rubric_path)
  fields = judge_lib.PAIRWISE_FIELDS if FLAGS.mode == "pairwise" else judge_lib.POINTWISE_FIELDS
  template = judge_lib.read_template(template_path, fields)
  candidates = {name: data_lib.read_predictions(path, require_reference=False)
                for name, path in zip(_system_names(paths), paths)}
  generation = runner.GenerationConfig(max_new_tokens=FLAGS.max_new_tokens,
                                       batch_size=FLAGS.batch_size,
                                       template=FLAGS.chat_template)
  from infer.loading import load_model
  loaded = load_model(FLAGS.judge)
  judge_fn = judge_lib.model_judge(loaded, generation)
  if FLAGS.mode == "pairwise":
    rows = judge_lib.judge_pairwise(judge_fn, template, rubric, candidates)
    if not rows:
      raise ValueError("the candidate files share no ids; pairwise judging compares answers to "
                       "the same id")
    scores = judge_lib.summarize_pairwise(rows, FLAGS.bootstrap_samples, FLAGS.seed)
  else:
    rows = judge_lib.judge_pointwise(judge_fn, template, rubric, candidates)
    scores = judge_lib.summarize_pointwise(rows, rubric, FLAGS.bootstrap_samples, FLAGS.seed)
  config = dict(mode=FLAGS.mode, judge=os.path.abspath(loaded.workdir), step=loaded.step,
                candidates={n: os.path.abspath(p) for n, p in zip(candidates, paths)},
                candidates_sha256={n: data_lib.file_digest(p) for n, p in zip(candidates, paths)},
                rubric=os.path.abspath(rubric_path), template=os.path.abspath(template_path),
                generation=generation.to_dict(),
                bootstrap=dict(samples=FLAGS.bootstrap_samples, seed=FLAGS.seed))
  return _report(rows, scores, config)


def _run_reward(paths) -> dict:
  """The reward-model judge (infer/eval/reward_judge.py) over the same candidates."""
  from infer.eval import data as data_lib
  from infer.eval import reward_judge

  candidates = {name: data_lib.read_predictions(path, require_reference=False)
                for name, path in zip(_system_names(paths), paths)}
  scorer = reward_judge.load_scorer(FLAGS.judge)
  rows, scores, extra = reward_judge.run(scorer, FLAGS.mode, candidates, FLAGS.tie_margin,
                                         FLAGS.bootstrap_samples, FLAGS.seed)
  config = dict(mode=FLAGS.mode, judge=os.path.abspath(FLAGS.judge),
                step=None if getattr(scorer, "step", None) is None else int(scorer.step), **extra,
                candidates={n: os.path.abspath(p) for n, p in zip(candidates, paths)},
                candidates_sha256={n: data_lib.file_digest(p) for n, p in zip(candidates, paths)},
                bootstrap=dict(samples=FLAGS.bootstrap_samples, seed=FLAGS.seed))
  return _report(rows, scores, config)


def _report(rows, scores, config) -> dict:
  from infer.eval import scoring
  scoring.write_jsonl(os.path.join(FLAGS.out, "judgements.jsonl"), rows)
  scoring.write_json(os.path.join(FLAGS.out, "scores.json"), scores)
  scoring.write_json(os.path.join(FLAGS.out, "config.json"), config)
  print(f"{scores['n']} judged items, {scores['unparseable']} unparseable "
        f"({scores['unparseable'] / max(scores['n'], 1):.0%}): not guessed, excluded from rates")
  if FLAGS.mode == "pairwise":
    pb = scores["position_bias"]
    for name, pair in scores["pairs"].items():
      print(f"{name}: wins {pair['wins_a']}-{pair['wins_b']}, ties {pair['ties']}, "
            f"win rate a {pair['win_rate_a']['value']}")
    print(f"position bias rate {pb['rate']} (first position chosen {pb['first_position_rate']})")
  else:
    for system, entry in scores["systems"].items():
      print(f"{system}: mean score {entry['score']['value']} ({entry['unparseable']} unparseable)")
  print(f"wrote {FLAGS.out}/judgements.jsonl, scores.json, config.json")
  return scores


def _main(argv):
  del argv
  from infer import cli
  cli.run_cli("judge", run)


def main():
  define_flags()
  app.run(_main)


if __name__ == "__main__":
  main()
