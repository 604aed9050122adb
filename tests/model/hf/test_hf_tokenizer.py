"""Tokenizer parity with transformers.AutoTokenizer: tokenizer.json, sentencepiece
tokenizer.model, the exported files, and this project's own sentencepiece tokenizer."""

import pytest

pytest.importorskip("transformers")

from model.hf import tokenizer as hf_tokenizer  # noqa: E402
from model.tokenizer import SentencePieceTokenizer, load_tokenizer  # noqa: E402
from tests.model.hf import hf_fixtures as fx  # noqa: E402

SAMPLE = fx.TEXTS + [
    "", " ", "\n", "\t\t  \n  x", "naïve café — “quotes” … ½ ⅓ 🙂🚀 zwischen  zwei",
    "class A(B):\n    def __init__(self, *a, **kw):\n        super().__init__()\n",
    "多言語のテキストと English mixed 中文 한국어 עברית",
]


def _auto(directory):
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  return AutoTokenizer.from_pretrained(str(directory))


def _check_parity(ours, auto):
  for text in SAMPLE:
    want = auto.encode(text, add_special_tokens=False)
    assert ours.encode(text) == want, repr(text)
    assert ours.decode(want) == auto.decode(want, skip_special_tokens=True), repr(text)
  assert ours.encode_batch(SAMPLE) == [ours.encode(t) for t in SAMPLE]
  assert ours.bos_id == (auto.bos_token_id if auto.bos_token_id is not None else -1)
  assert ours.eos_id == auto.eos_token_id


@pytest.fixture(scope="module", params=["tokenizer.json", "tokenizer.model"])
def source(request, tmp_path_factory):
  directory = tmp_path_factory.mktemp(request.param.replace(".", "_"))
  if request.param == "tokenizer.json":
    fx.write_tokenizer_json(str(directory))
  else:
    fx.write_sentencepiece(str(directory))
  return directory


def test_ids_equal_autotokenizer(source):
  ours = hf_tokenizer.from_hf_dir(str(source))
  auto = _auto(source)
  _check_parity(ours, auto)
  with_specials = auto.encode("Hello world")  # AutoTokenizer's default adds BOS iff add_bos
  assert with_specials[:1] == [ours.bos_id] if ours.add_bos else with_specials == ours.encode(
      "Hello world")


def test_run_dir_round_trip_and_export_load_in_autotokenizer(source, tmp_path):
  ours = hf_tokenizer.from_hf_dir(str(source))
  ours.save(str(tmp_path / "tok"))
  again = load_tokenizer(str(tmp_path / "tok"))
  assert isinstance(again, hf_tokenizer.HfTokenizer)
  assert again.fingerprint == ours.fingerprint and again.describe() == ours.describe()
  files = again.export_files(str(tmp_path / "export"))
  assert "tokenizer.json" in files
  exported = _auto(tmp_path / "export")
  _check_parity(ours, exported)
  assert exported.encode("Hello world") == _auto(source).encode("Hello world")
  if ours.chat_template:
    assert exported.chat_template == ours.chat_template


def test_project_sentencepiece_exports_to_autotokenizer(tmp_path):
  tok = SentencePieceTokenizer.train(fx.TEXTS * 20, vocab_size=450)
  files = hf_tokenizer.export_project_tokenizer(tok, str(tmp_path))
  assert "tokenizer_config.json" in files
  auto = _auto(tmp_path)
  for text in SAMPLE:
    assert auto.encode(text, add_special_tokens=False) == tok.encode(text), repr(text)
  assert (auto.bos_token_id, auto.eos_token_id) == (tok.bos_id, tok.eos_id)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no tokenizer.json or tokenizer.model"):
    hf_tokenizer.from_hf_dir(str(tmp_path))
  (tmp_path / "tokenizer.json").write_text('{"kind": "hf"}')
  with pytest.raises(FileNotFoundError, match="re-import"):
    load_tokenizer(str(tmp_path))
