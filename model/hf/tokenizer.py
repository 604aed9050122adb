"""Hugging Face tokenizers behind the project's `Tokenizer` interface (model/tokenizer.py).

`HfTokenizer` runs a `tokenizer.json` through the `tokenizers` package. `encode(text)`
returns the ids of the text alone (AutoTokenizer's `encode(text, add_special_tokens=False)`);
BOS is added by the callers that start a sequence (model/chat.py, train/data/sft.py) from
`bos_id`, as for every tokenizer here, and `add_bos` records whether the source
tokenizer adds it by default. A directory with only a sentencepiece `tokenizer.model` is
converted once, at import, with `transformers` (the conversion extra): its fast tokenizer
is what AutoTokenizer itself runs, so the ids agree by construction and are tested.

In a run directory the tokenizer lives in DIR/tokenizer/: hf_tokenizer.json (the
`tokenizers` JSON) beside the project's tokenizer.json description (kind "hf").
`export_files` writes tokenizer.json, tokenizer_config.json and special_tokens_map.json
(plus chat_template.jinja) that AutoTokenizer loads.
"""

import json
import os
from typing import Iterable, Sequence

from model import tokenizer as tokenizer_lib

KIND = "hf"
BACKEND_FILE = "hf_tokenizer.json"
_SPECIALS = ("bos_token", "eos_token", "pad_token", "unk_token")


class HfTokenizer(tokenizer_lib.Tokenizer):
  """A `tokenizers.Tokenizer` plus its special tokens and chat template."""
  kind = KIND

  def __init__(self, backend_json: str, info: dict | None = None):
    import tokenizers  # pylint: disable=g-import-not-at-top
    self._json = backend_json
    self._tok = tokenizers.Tokenizer.from_str(backend_json)
    self._info = dict(info or {})
    self._special_ids = {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}

  def _token_id(self, key: str) -> int:
    token = self._info.get(key)
    if token is None:
      return -1
    i = self._tok.token_to_id(token)
    return -1 if i is None else int(i)

  vocab_size = property(lambda self: self._tok.get_vocab_size(with_added_tokens=True))
  bos_id = property(lambda self: self._token_id("bos_token"))
  eos_id = property(lambda self: self._token_id("eos_token"))
  unk_id = property(lambda self: self._token_id("unk_token"))

  @property
  def pad_id(self) -> int:
    """The pad token, else eos, else 0 (padding is always masked out)."""
    for key in ("pad_token", "eos_token"):
      i = self._token_id(key)
      if i >= 0:
        return i
    return 0

  @property
  def add_bos(self) -> bool:
    return bool(self._info.get("add_bos", False))

  @property
  def chat_template(self) -> str | None:
    return self._info.get("chat_template")

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Iterable[int]) -> str:
    n = self.vocab_size
    keep = [int(i) for i in ids if 0 <= int(i) < n and int(i) not in self._special_ids]
    return self._tok.decode(keep, skip_special_tokens=True)

  def id_to_piece(self, i: int) -> str:
    return self._tok.id_to_token(int(i))

  def describe(self) -> dict:
    return dict(self._info, kind=self.kind, vocab_size=self.vocab_size, pad_id=self.pad_id,
                bos_id=self.bos_id, eos_id=self.eos_id)

  def _model_bytes(self) -> bytes:
    return self._json.encode()

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, BACKEND_FILE), "w") as f:
      f.write(self._json)
    super().save(directory)

  def export_files(self, directory: str) -> list[str]:
    """Writes the files AutoTokenizer loads; returns their names."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "tokenizer.json"), "w") as f:
      f.write(self._json)
    specials = {k: self._info[k] for k in _SPECIALS if self._info.get(k) is not None}
    config = dict(specials, tokenizer_class="PreTrainedTokenizerFast",
                  add_bos_token=self.add_bos, add_eos_token=bool(self._info.get("add_eos")),
                  clean_up_tokenization_spaces=False)
    if self._info.get("model_max_length"):
      config["model_max_length"] = self._info["model_max_length"]
    files = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
      json.dump(config, f, indent=2)
    with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
      json.dump(specials, f, indent=2)
    if self.chat_template:
      with open(os.path.join(directory, "chat_template.jinja"), "w") as f:
        f.write(self.chat_template)
      files.append("chat_template.jinja")
    return files


def load(directory: str, info: dict) -> HfTokenizer:
  """The `load_tokenizer` hook for kind "hf": reads DIR/hf_tokenizer.json."""
  path = os.path.join(directory, BACKEND_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: the Hugging Face tokenizer of this run is "
                            "missing; re-import the model with python -m infer.hf_import")
  with open(path) as f:
    backend = f.read()
  keep = {k: v for k, v in info.items()
          if k not in ("kind", "vocab_size", "pad_id", "bos_id", "eos_id")}
  return HfTokenizer(backend, keep)


def _token_text(value):
  """A special token as written in tokenizer_config.json: a string or an AddedToken dict."""
  if isinstance(value, dict):
    return value.get("content")
  return value


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); re-copy it") from None


def from_hf_dir(hf_dir: str) -> HfTokenizer:
  """The tokenizer of a Hugging Face model directory (tokenizer.json or tokenizer.model)."""
  config = _read_json(os.path.join(hf_dir, "tokenizer_config.json"))
  specials_map = _read_json(os.path.join(hf_dir, "special_tokens_map.json"))
  template = config.get("chat_template")
  template_path = os.path.join(hf_dir, "chat_template.jinja")
  if os.path.exists(template_path):
    with open(template_path) as f:
      template = f.read()
  if not isinstance(template, (str, type(None))):
    template = None  # several named templates: not carried over
  json_path = os.path.join(hf_dir, "tokenizer.json")
  if os.path.exists(json_path):
    with open(json_path) as f:
      backend = f.read()
    info = {k: _token_text(config.get(k, specials_map.get(k))) for k in _SPECIALS}
    info["add_bos"] = bool(config.get("add_bos_token", False))
    info["add_eos"] = bool(config.get("add_eos_token", False))
  elif os.path.exists(os.path.join(hf_dir, "tokenizer.model")):
    backend, info = _convert_sentencepiece(hf_dir)
  else:
    raise FileNotFoundError(
        f"no tokenizer.json or tokenizer.model in {hf_dir}; copy the model's tokenizer files "
        "there, or pass --tokenizer_dir=DIR holding them")
  info = {k: v for k, v in info.items() if v is not None}
  if template:
    info["chat_template"] = template
  if config.get("model_max_length") and config["model_max_length"] < 10**9:
    info["model_max_length"] = int(config["model_max_length"])
  return HfTokenizer(backend, info)


def _convert_sentencepiece(hf_dir: str) -> tuple[str, dict]:
  """tokenizer.model -> the fast tokenizer AutoTokenizer builds from it (needs transformers)."""
  try:
    from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(f"{hf_dir} has only a sentencepiece tokenizer.model; converting it needs "
                     "transformers: pip install -e '.[hf]'") from None
  tok = AutoTokenizer.from_pretrained(hf_dir)
  backend = getattr(tok, "backend_tokenizer", None)
  if backend is None:
    raise ValueError(f"transformers loaded {type(tok).__name__} for {hf_dir}, which has no "
                     "tokenizers backend; provide a tokenizer.json")
  info = {k: getattr(tok, k, None) for k in _SPECIALS}
  probe = tok.encode("a")
  info["add_bos"] = bool(tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id])
  info["add_eos"] = bool(tok.eos_token_id is not None and probe[-1:] == [tok.eos_token_id])
  info["source"] = "tokenizer.model"
  return backend.to_str(), info


def export_project_tokenizer(tok, directory: str) -> list[str]:
  """HF tokenizer files for a tokenizer this project trained (sentencepiece), via the
  fast tokenizer transformers builds from the .model proto; [] (with a warning) for the
  byte tokenizer, which has no HF counterpart here.

  The ids match `tok.encode` except for text containing a literal U+2581, which this
  project encodes as bytes and sentencepiece-derived tokenizers read as a space.
  """
  import tempfile  # pylint: disable=g-import-not-at-top

  from absl import logging  # pylint: disable=g-import-not-at-top
  if not isinstance(tok, tokenizer_lib.SentencePieceTokenizer):
    logging.warning("the %s tokenizer has no Hugging Face equivalent: no tokenizer files "
                    "written (the weights and config are)", tok.kind)
    return []
  try:
    from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError("exporting a sentencepiece tokenizer needs transformers: "
                     "pip install -e '.[hf]'") from None
  with tempfile.TemporaryDirectory() as tmp:
    tok.save(tmp)
    os.remove(os.path.join(tmp, tokenizer_lib.CONFIG_FILE))  # ours, not HF's tokenizer.json
    with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
      json.dump({"tokenizer_class": "TokenizersBackend"}, f)
    backend = AutoTokenizer.from_pretrained(tmp).backend_tokenizer.to_str()
  info = {}
  for key, i in (("bos_token", tok.bos_id), ("eos_token", tok.eos_id), ("pad_token", tok.pad_id),
                 ("unk_token", tok.unk_id)):
    if i is not None and i >= 0:
      info[key] = tok.id_to_piece(i)
  return HfTokenizer(backend, info).export_files(directory)
