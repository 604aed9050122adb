r"""An evaluation report: task suite, paired comparison, perplexity, judges and their meta-eval.

  python -m experiments.evaluate_demo --base=runs/finetune_cpu/base --out=runs/evaluate_demo \
      --systems=runs/finetune_cpu_300/full,runs/finetune_cpu_300/lora_r4

(the run directories come from `python -m experiments.finetune --preset=cpu`). It
1. decodes the embedded tasks' held-out split greedily with every system and scores it with
   each task's checker (`task_score`), per task, with bootstrap intervals;
2. compares the first two systems with a paired bootstrap on the same ids;
3. measures the base model's perplexity and bits per byte on a standard-library source file;
4. judges the first two systems pairwise (both orders) with the first system as the judge,
   and, as a scripted reference, with a judge that prefers the longer answer;
5. meta-evaluates both judges against labels derived from the tasks' verifiable answers (the
   system whose answer the checker accepts wins; both or neither: a tie); no human labelled
   anything here.
Writes OUT/report.md, OUT/report.json and OUT/task_scores.png.
"""

import inspect
import os
import textwrap

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("systems", [], "Run directories to evaluate on the task suite (>= 2).")
flags.DEFINE_string("base", "", "A pretrained run for the perplexity measurement.")
flags.DEFINE_string("out", None, "Report directory.")
flags.DEFINE_integer("n_per_task", 20, "Held-out examples per task.")
flags.DEFINE_integer("max_new_tokens", 24, "Tokens per answer.")
flags.DEFINE_integer("judge_tokens", 32, "Tokens per judge verdict.")
flags.DEFINE_integer("bootstrap_samples", 1000, "Bootstrap resamples.")


def _suite(loaded, n_per_task: int):
  from infer.eval import data, runner, scoring
  rows = data.suite_rows(n_per_task)
  config = runner.GenerationConfig(max_new_tokens=FLAGS.max_new_tokens, batch_size=16,
                                   template="" if loaded.chat_template else "qa")
  rows = runner.generate(loaded, rows, config)
  scores, _ = scoring.score_rows(rows, ["task_score", "exact", "f1"], FLAGS.bootstrap_samples)
  return rows, scores, config.to_dict()


def _verifiable_labels(rows_a, rows_b) -> dict:
  """Per id: "a" if only system a's answer passes the task checker, "b" if only b's, else tie."""
  from infer.eval import tasks
  labels = {}
  for ra, rb in zip(rows_a, rows_b):
    task = ra["metadata"]["task"]
    ok_a = tasks.score(task, ra["prediction"], ra["references"][0])
    ok_b = tasks.score(task, rb["prediction"], rb["references"][0])
    labels[ra["id"]] = "a" if ok_a > ok_b else "b" if ok_b > ok_a else "tie"
  return labels


def _meta(judged, labels) -> dict:
  from infer.eval import agreement, bias
  paired = [(r["verdict"], labels[r["id"]]) for r in judged if r["verdict"] is not None]
  report = agreement.report([p[0] for p in paired], [p[1] for p in paired], ("b", "tie", "a"),
                            FLAGS.bootstrap_samples)
  report.update(n_paired=len(paired), n_unparseable=sum(r["verdict"] is None for r in judged),
                position=bias.position_bias(judged), length=bias.length_bias(judged, True))
  return report


def _judge_and_meta(judge_fn, name_a, rows_a, name_b, rows_b, labels) -> dict:
  from infer.eval import judge as judge_lib
  rubric = judge_lib.read_rubric(os.path.join(judge_lib.RUBRICS_DIR, "helpfulness.md"))
  template = judge_lib.read_template(os.path.join(judge_lib.RUBRICS_DIR, "pairwise.md"),
                                     judge_lib.PAIRWISE_FIELDS)
  candidates = {name: [dict(id=r["id"], input=r["input"], prediction=r["prediction"])
                       for r in rows] for name, rows in ((name_a, rows_a), (name_b, rows_b))}
  judged = judge_lib.judge_pairwise(judge_fn, template, rubric, candidates)
  return {"summary": judge_lib.summarize_pairwise(judged, FLAGS.bootstrap_samples),
          "meta_eval": _meta(judged, labels), "example_output": judged[0]["order_ab"]["raw"]}


def _longer_answer_judge(prompts):
  """Scripted reference judge: prefers the answer with more characters (ties: tie)."""
  out = []
  for p in prompts:
    a = p.split("Answer A:\n", 1)[1].split("\n\nAnswer B:\n", 1)[0]
    b = p.split("Answer B:\n", 1)[1].split("\n\nReply with", 1)[0]
    out.append("Verdict: " + ("A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"))
  return out


def _fmt(s: dict, digits: int = 3) -> str:
  if s.get("value") is None:
    return "undefined" + (f" ({s['reason']})" if s.get("reason") else "")
  if s.get("low") is None:
    return f"{s['value']:.{digits}f}"
  return f"{s['value']:.{digits}f} [{s['low']:.{digits}f}, {s['high']:.{digits}f}]"


def _plot(systems: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  labels = sorted(next(iter(systems.values()))["slices"])
  fig, ax = plt.subplots(figsize=(10, 4))
  width = 0.8 / len(systems)
  for k, (name, scores) in enumerate(systems.items()):
    entries = [scores["slices"][label]["task_score"] for label in labels]
    values = np.asarray([e["value"] for e in entries])
    err = np.asarray([[e["value"] - e["low"], e["high"] - e["value"]] for e in entries]).T
    ax.bar(np.arange(len(labels)) + k * width, values, width, yerr=err, capsize=3, label=name)
  ax.set_xticks(np.arange(len(labels)) + width * (len(systems) - 1) / 2)
  ax.set_xticklabels([label.split("=", 1)[1] for label in labels])
  ax.set_ylabel("task_score (95% bootstrap interval)")
  ax.set_title("Held-out embedded tasks, greedy decoding")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run() -> dict:
  from infer.eval import bootstrap, runner, scoring
  from infer.eval import judge as judge_lib
  from infer.loading import load_model

  if len(FLAGS.systems) < 2 or not FLAGS.out:
    raise ValueError("give --systems=RUN_A,RUN_B (e.g. from `python -m experiments.finetune "
                     "--preset=cpu --workdir=runs/finetune_cpu_300`) and --out=DIR")
  names = [os.path.basename(os.path.normpath(s)) for s in FLAGS.systems]
  loaded, rows, suite = {}, {}, {}
  for name, path in zip(names, FLAGS.systems):
    loaded[name] = load_model(path)
    rows[name], suite[name], generation = _suite(loaded[name], FLAGS.n_per_task)
  a, b = names[:2]
  paired = scoring.compare(rows[a], rows[b], ["task_score"], FLAGS.bootstrap_samples)
  result = {"systems": {n: {"workdir": os.path.abspath(p), "step": loaded[n].step}
                        for n, p in zip(names, FLAGS.systems)},
            "n_per_task": FLAGS.n_per_task, "generation": generation, "suite": suite,
            "paired_task_score": {"system_a": a, "system_b": b, **paired["task_score"]}}
  if FLAGS.base:
    import textwrap as source_module
    doc = inspect.getsource(source_module)
    base = load_model(FLAGS.base)
    windows = runner.perplexity(base, [("textwrap.py", doc)], batch_size=8)
    result["perplexity"] = {
        "text": f"the source of the standard library's textwrap.py ({len(doc.encode())} bytes; "
                "the base was pretrained on standard-library source, so it may have seen it)",
        "workdir": os.path.abspath(FLAGS.base),
        **{k: bootstrap.interval(fn, len(windows), FLAGS.bootstrap_samples)
           for k, fn in runner.perplexity_values(windows).items()}}
  labels = _verifiable_labels(rows[a], rows[b])
  judge_gen = runner.GenerationConfig(max_new_tokens=FLAGS.judge_tokens, batch_size=16)
  result["judges"] = {
      f"model:{a}": _judge_and_meta(judge_lib.model_judge(loaded[a], judge_gen), a, rows[a], b,
                                    rows[b], labels),
      "scripted:longer_answer": _judge_and_meta(_longer_answer_judge, a, rows[a], b, rows[b],
                                                labels)}
  result["label_counts"] = {k: list(labels.values()).count(k) for k in ("a", "b", "tie")}
  os.makedirs(FLAGS.out, exist_ok=True)
  scoring.write_json(os.path.join(FLAGS.out, "report.json"), result)
  _plot(suite, os.path.join(FLAGS.out, "task_scores.png"))
  with open(os.path.join(FLAGS.out, "report.md"), "w") as f:
    f.write(markdown(result))
  print(markdown(result))
  return result


def markdown(r: dict) -> str:
  names = list(r["suite"])
  slices = sorted(r["suite"][names[0]]["slices"])
  lines = ["# Evaluation report", "",
           f"Embedded tasks, held-out split, {r['n_per_task']} examples per task, greedy "
           f"decoding ({r['generation']['max_new_tokens']} tokens max), scored with each task's "
           "checker; 95% percentile bootstrap intervals over examples.", "",
           "| system | step | task_score | exact | f1 | " + " | ".join(
               s.split("=", 1)[1] for s in slices) + " |",
           "|---" * (5 + len(slices)) + "|"]
  for name in names:
    s = r["suite"][name]
    lines.append(f"| {name} | {r['systems'][name]['step']} | {_fmt(s['task_score'])} | "
                 f"{_fmt(s['exact'])} | {_fmt(s['f1'])} | " + " | ".join(
                     f"{s['slices'][x]['task_score']['value']:.2f}" for x in slices) + " |")
  p = r["paired_task_score"]
  lines += ["", f"Paired comparison on the same ids, task_score {p['system_a']} minus "
            f"{p['system_b']}: "
            f"{p['difference']:+.3f} [{p['low']:+.3f}, {p['high']:+.3f}], two-sided bootstrap "
            f"p = {p['p_value']:.3f} (n = {p['n']}).", ""]
  if "perplexity" in r:
    pp = r["perplexity"]
    lines += [f"Base model on {pp['text']}: perplexity {_fmt(pp['perplexity'], 2)}, "
              f"bits per byte {_fmt(pp['bits_per_byte'])}.", ""]
  lines += ["## Judges and their meta-evaluation", "",
            "The reference labels are **derived from the tasks' verifiable answers**, not "
            "from "
            f"people: per id, the system whose answer passes the checker wins, otherwise a tie "
            f"({r['label_counts']}). Pairwise, both orders per item.", "",
            "| judge | unparseable | position bias | first-position rate | longer wins | "
            "agreement | Cohen's kappa | Spearman |", "|---" * 8 + "|"]
  for name, j in r["judges"].items():
    m, s = j["meta_eval"], j["summary"]
    pb = s["position_bias"]
    cells = [pb["rate"], pb["first_position_rate"], s["length_bias"].get("longer_wins_rate")]
    shown = " | ".join("-" if v is None else f"{v:.2f}" for v in cells)
    lines.append(f"| {name} | {s['unparseable']}/{s['n']} | {shown} | "
                 f"{_fmt(m['percent_agreement'])} | {_fmt(m['cohen_kappa'])} | "
                 f"{_fmt(m['spearman'])} |")
  first = next(iter(r["judges"].values()))
  lines += ["", "An output of the model judge (unparseable outputs are counted, never guessed):",
            "", "```", textwrap.shorten(first["example_output"], 200) or "(empty)", "```", "",
            "![task scores](task_scores.png)", ""]
  return "\n".join(lines)


def _main(argv):
  del argv
  from infer import cli
  cli.run_cli("evaluate_demo", run)


def main():
  app.run(_main)


if __name__ == "__main__":
  main()
