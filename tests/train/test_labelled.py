"""Labelled jsonl: label kinds, clear file:line errors, encoding, the embedded set."""

import json

import numpy as np
import pytest

from model.tokenizer import ByteTokenizer
from train.config import ClassifyConfig, Config, DataConfig, TrainConfig
from train.data import labelled


def _write(tmp_path, rows, name="d.jsonl"):
  path = tmp_path / name
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return str(path)


def test_label_kinds(tmp_path):
  names = labelled.read_labelled_jsonl(_write(tmp_path, [{"text": "a", "label": "pos"},
                                                         {"text": "b", "label": "neg"}]))
  space = labelled.label_space(names)
  assert space == labelled.LabelSpace(False, ("neg", "pos")) and space.n_outputs == 2
  ids = [{"text": "a", "label": 2}, {"text": "b", "label": 0}]
  assert labelled.label_space(ids).names == ("0", "1", "2")
  floats = [{"text": "a", "label": 0.5}, {"text": "b", "label": 2.0}]
  assert labelled.label_space(floats).regression
  assert labelled.label_space(ids, "regression").n_outputs == 1
  encoded = labelled.encode_rows(ByteTokenizer(), names, space, 8)
  assert encoded["labels"][:, 0].tolist() == [1, 0]
  assert encoded["inputs"][0, :3].tolist() == [257, ord("a"), 258]
  assert encoded["segment_ids"][0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
  assert encoded["inputs"][0, 3] == 256  # pad
  reg = labelled.encode_rows(ByteTokenizer(), floats, labelled.label_space(floats), 4)
  assert reg["labels"].dtype == np.float32 and reg["labels"][0, 0] == 0.5


@pytest.mark.parametrize("line, message", [
    ('{"text": "a"}', "line 2 of .*'text' and 'label'"),
    ('{"text": "", "label": 1}', "line 2 of .*non-empty string"),
    ('{"text": "a", "label": -1}', "line 2 of .*class id"),
    ('{"text": "a", "label": true}', "line 2 of .*class id"),
    ('not json', "line 2 of .*invalid JSON"),
    ('{"text": "a", "label": 1}', "mixes label kinds"),
])
def test_bad_rows_name_file_and_line(tmp_path, line, message):
  path = _write(tmp_path, [{"text": "ok", "label": "x"}, line])
  with pytest.raises(ValueError, match=message):
    labelled.read_labelled_jsonl(path)


def test_fractional_class_labels_need_regression():
  with pytest.raises(ValueError, match="classify.task=regression"):
    labelled.label_space([{"text": "a", "label": 0.5}, {"text": "b", "label": 1}],
                         "classification")


def test_embedded_set_is_deterministic_and_disjoint():
  train = labelled.embedded_rows("train", 5)
  heldout = labelled.embedded_rows("heldout", 5)
  assert train == labelled.embedded_rows("train", 5)
  assert {r["label"] for r in train} == {r["label"] for r in heldout} and len(train) == 35
  assert not {r["text"] for r in train} & {r["text"] for r in heldout}


def test_datasets_and_config_fit(tmp_path):
  rows = [{"text": f"row {i}", "label": ["a", "b", "c"][i % 3]} for i in range(60)]
  data = DataConfig(kind="labelled", data=_write(tmp_path, rows), seq_len=16, val_fraction=0.2)
  train_ds, val_ds, info = labelled.build_labelled_datasets(ByteTokenizer(), data)
  assert train_ds.n_windows + val_ds.n_windows == 60
  batch = train_ds.batch(0, 0, 4)
  assert batch["labels"].shape == (4, 1) and batch["inputs"].shape == (4, 16)
  evals = val_ds.eval_batches(8)
  assert sum(float(b["label_weights"].sum()) for b in evals) == val_ds.n_windows
  config = Config(head="classify", data=data, train=TrainConfig(objective="classify"))
  fitted = labelled.fit_label_config(config, info)
  assert fitted.classify.n_labels == 3 and fitted.classify.task == "classification"
  wrong = Config(head="classify", data=data, train=TrainConfig(objective="classify"),
                 classify=ClassifyConfig(n_labels=5))
  with pytest.raises(ValueError, match="n_labels=5"):
    labelled.fit_label_config(wrong, info)
  with pytest.raises(ValueError, match="head=classify"):
    Config(data=data, train=TrainConfig(objective="classify"))
