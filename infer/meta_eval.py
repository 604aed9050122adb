r"""Meta-evaluation of a judge: agreement with human labels, and the judge's biases.

  python -m infer.meta_eval --judgements=OUT/judgements.jsonl --human=labels.jsonl --out=META
  python -m infer.meta_eval --judgements=... --human=... --judge_system=a --out=META

Human labels are jsonl rows {"id", "label"} with, when several systems share an id,
"system" (pointwise) or "system_a" and "system_b" (pairwise). Pairwise labels are "a", "b",
"tie" or a system's name; pointwise labels are numbers on the rubric's scale. Writes
META/scores.json: percent_agreement, cohen_kappa, weighted kappas, pearson, spearman, kendall
(each {"value", "low", "high", "n"}; value null with a "reason" when undefined), the confusion
matrix, counts of unparseable and unlabelled items, and the bias reports.
"""

import os

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
  """Defines this CLI's flags (at run time, so that importing the module for its
  functions never clashes with another CLI's flags of the same name)."""
  flags.DEFINE_string("judgements", None, "judgements.jsonl written by infer.judge.")
  flags.DEFINE_string("human", None, "Human labels jsonl.")
  flags.DEFINE_string("out", None, "Output directory.")
  flags.DEFINE_string("judge_system", None, "The candidate system the judge itself produced "
                      "(for the self-preference report).")
  flags.DEFINE_string("field", "score", "Pointwise: 'score' (the mean over criteria) or a "
                      "criterion name.")
  flags.DEFINE_integer("bootstrap_samples", 1000, "Bootstrap resamples.")
  flags.DEFINE_integer("seed", 0, "Bootstrap seed.")

PAIRWISE_LABELS = ("b", "tie", "a")


def _human_key(where: str, obj: dict, pairwise: bool) -> str:
  if "id" not in obj or "label" not in obj:
    raise ValueError(f"{where}: a human label row needs 'id' and 'label'")
  if pairwise and "system_a" in obj and "system_b" in obj:
    return f"{obj['id']}|{obj['system_a']}|{obj['system_b']}"
  if not pairwise and "system" in obj:
    return f"{obj['id']}|{obj['system']}"
  return str(obj["id"])


def _pairwise_label(where: str, label, row: dict) -> str:
  text = str(label).strip()
  if text.lower() in PAIRWISE_LABELS:
    return text.lower()
  if text == row["system_a"]:
    return "a"
  if text == row["system_b"]:
    return "b"
  raise ValueError(f"{where}: pairwise label {label!r} must be 'a', 'b', 'tie' or "
                   f"{row['system_a']!r} / {row['system_b']!r}")


def _pointwise_label(where: str, label) -> float:
  if isinstance(label, bool) or not isinstance(label, (int, float)):
    raise ValueError(f"{where}: a pointwise label must be a number, got {label!r}")
  return float(label)


def pair_up(judged: list[dict], human_rows: list[tuple[str, dict]], pairwise: bool,
            field: str = "score"):
  """(judge labels, human labels, judged rows kept, human map by row key, counts)."""
  by_key = {_human_key(w, o, pairwise): (w, o) for w, o in human_rows}
  id_counts = {}
  for row in judged:
    id_counts[str(row["id"])] = id_counts.get(str(row["id"]), 0) + 1
  kept, j_labels, h_labels, human_by_row = [], [], [], {}
  unlabelled = unparseable = 0
  for row in judged:
    entry = by_key.get(row["key"])
    if entry is None and str(row["id"]) in by_key:
      if id_counts[str(row["id"])] > 1:
        raise ValueError(f"id {row['id']!r} is judged for several systems; give the human label "
                         "'system' (pointwise) or 'system_a' and 'system_b' (pairwise)")
      entry = by_key[str(row["id"])]
    if entry is None:
      unlabelled += 1
      continue
    where, obj = entry
    label = (_pairwise_label(where, obj["label"], row) if pairwise
             else _pointwise_label(where, obj["label"]))
    human_by_row[row["key"]] = label
    value = row["verdict"] if pairwise else (
        row["score"] if field == "score" else (row.get("scores") or {}).get(field))
    if value is None:
      unparseable += 1
      continue
    kept.append(row)
    j_labels.append(value)
    h_labels.append(label)
  return j_labels, h_labels, kept, human_by_row, dict(unlabelled=unlabelled,
                                                      unparseable=unparseable)


def run() -> dict:
  from infer.eval import agreement, bias, scoring
  from infer.eval import data as data_lib

  for name in ("judgements", "human", "out"):
    if not getattr(FLAGS, name):
      raise ValueError(f"give --{name}=...")
  judged = [obj for _, obj in data_lib.read_jsonl(FLAGS.judgements)]
  pairwise = "system_a" in judged[0]
  for i, row in enumerate(judged):
    if "key" not in row or ("verdict" if pairwise else "score") not in row:
      raise ValueError(f"{FLAGS.judgements}:{i + 1}: not a row written by infer.judge")
  human_rows = data_lib.read_jsonl(FLAGS.human)
  j_labels, h_labels, kept, human_by_row, counts = pair_up(judged, human_rows, pairwise,
                                                              FLAGS.field)
  if pairwise:
    labels, j_cat, h_cat, j_values = PAIRWISE_LABELS, j_labels, h_labels, None
  else:
    j_cat = [float(round(v)) for v in j_labels]  # categories for kappa; correlations unrounded
    h_cat = h_labels
    labels = sorted(set(j_cat) | set(h_cat))
    j_values = j_labels
  scores = agreement.report(j_cat, h_cat, labels, FLAGS.bootstrap_samples, FLAGS.seed,
                            judge_values=j_values, human_values=None if pairwise else h_labels)
  scores.update(mode="pairwise" if pairwise else "pointwise", n_judged=len(judged),
                n_paired=len(kept), n_unparseable=counts["unparseable"],
                n_without_human_label=counts["unlabelled"])
  if not pairwise:
    scores["note"] = ("judge scores are rounded to the nearest integer for the categorical "
                      "statistics (agreement, kappas, confusion matrix), unrounded for "
                      "the correlations")
  biases = {"length": bias.length_bias(judged, pairwise)}
  if pairwise:
    biases["position"] = bias.position_bias(judged)
  if FLAGS.judge_system:
    biases["self_preference"] = bias.self_preference(judged, human_by_row, FLAGS.judge_system,
                                                     pairwise)
  scores["bias"] = biases
  config = dict(judgements=os.path.abspath(FLAGS.judgements), human=os.path.abspath(FLAGS.human),
                judgements_sha256=data_lib.file_digest(FLAGS.judgements),
                human_sha256=data_lib.file_digest(FLAGS.human), judge_system=FLAGS.judge_system,
                field=FLAGS.field, bootstrap=dict(samples=FLAGS.bootstrap_samples,
                                                  seed=FLAGS.seed))
  scoring.write_json(os.path.join(FLAGS.out, "scores.json"), scores)
  scoring.write_json(os.path.join(FLAGS.out, "config.json"), config)
  print(f"{len(kept)} items paired with human labels ({counts['unparseable']} unparseable "
        f"judgements and {counts['unlabelled']} unlabelled items left out)")
  for name in ("percent_agreement", "cohen_kappa", "weighted_kappa_linear",
               "weighted_kappa_quadratic", "pearson", "spearman", "kendall"):
    s = scores[name]
    shown = "null (" + s.get("reason", "no items") + ")" if s["value"] is None else (
        f"{s['value']:.4f} [{s['low']:.4f}, {s['high']:.4f}]" if s.get("low") is not None
        else f"{s['value']:.4f}")
    print(f"{name:>24}: {shown}")
  print(f"wrote {FLAGS.out}/scores.json, config.json")
  return scores


def _main(argv):
  del argv
  from infer import cli
  cli.run_cli("meta_eval", run)


def main():
  define_flags()
  app.run(_main)


if __name__ == "__main__":
  main()
