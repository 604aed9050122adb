"""Tiny random Hugging Face models and tokenizers built locally (no downloads)."""

import json
import os

import numpy as np

VOCAB = 320  # > the 256 byte-level symbols of the tiny BPE tokenizer below
TEXTS = [
    "Hello world, this is a small test of tokenizers and models.",
    "def foo(x):\n    return x  +  1\n\n\tif y:\n\t\tpass  # comment\n",
    "Grüße aus München! Ça va? 日本語のテキスト。 Привет, мир. 안녕하세요 مرحبا",
    "   leading spaces and trailing   \n\n\n",
    "numbers 12345 67.89 and symbols {}[]()<>=+-*/ \\ | ~ ` ' \"",
    "for i in range(10):\n        print(i ** 2)\r\n",
]
PROMPTS = ["Hello world", "def foo(x):\n    return", "Grüße aus", "  a  b\n\tc 123 ",
           "x"]


def tiny_config(model_type: str):
  """A tiny transformers config of `model_type` (float32, random init scaled up so logits
  are far from zero and a wrong mapping shows)."""
  import transformers  # pylint: disable=g-import-not-at-top
  common = dict(vocab_size=VOCAB, initializer_range=0.15, bos_token_id=1, eos_token_id=2)
  llama_like = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                    rms_norm_eps=1e-5, **common)
  if model_type == "llama":
    return transformers.LlamaConfig(
        **llama_like, attention_bias=True, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16})
  if model_type == "mistral":
    return transformers.MistralConfig(**llama_like, head_dim=16, sliding_window=None)
  if model_type == "qwen2":
    return transformers.Qwen2Config(**llama_like, tie_word_embeddings=False)
  if model_type == "mixtral":
    return transformers.MixtralConfig(**llama_like, num_local_experts=4, num_experts_per_tok=2)
  if model_type == "gpt2":
    return transformers.GPT2Config(n_embd=48, n_layer=2, n_head=4, n_positions=64,
                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
  raise ValueError(model_type)


def build_model(model_type: str, seed: int = 0):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(tiny_config(model_type))
  model.eval()
  with torch.no_grad():  # non-trivial norm scales and biases
    for name, p in model.named_parameters():
      if "norm" in name or "ln_" in name or name.endswith(".bias"):
        p.copy_(p + 0.1 * torch.randn_like(p))
  return model.float()


def bpe_tokenizer_json(vocab_size: int = 300):
  """A byte-level BPE `tokenizers.Tokenizer` trained on TEXTS, with <s> </s> <pad>."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(TEXTS * 5, trainer)
  return tok


def write_tokenizer_json(directory: str) -> None:
  bpe_tokenizer_json().save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
               "eos_token": "</s>", "pad_token": "<pad>",
               "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}, f)


def write_sentencepiece(directory: str) -> None:
  """A Llama-style tokenizer.model (sentencepiece BPE with byte fallback) + config."""
  import io  # pylint: disable=g-import-not-at-top

  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  writer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(TEXTS * 20), model_writer=writer, vocab_size=450,
      model_type="bpe", byte_fallback=True, character_coverage=1.0, minloglevel=2,
      unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
  with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
    f.write(writer.getvalue())
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
               "unk_token": "<unk>", "add_bos_token": True}, f)


def ragged_batch(tokenizer, prompts=PROMPTS):
  """(right-padded ids [B, L] int32, lengths [B]) of the prompts, BOS first."""
  ids = [[tokenizer.bos_id] + tokenizer.encode(p) for p in prompts]
  lengths = np.array([len(i) for i in ids])
  out = np.full((len(ids), lengths.max()), tokenizer.pad_id, np.int32)
  for row, seq in enumerate(ids):
    out[row, :len(seq)] = seq
  return out, lengths


def hf_logits(model, ids, lengths) -> list:
  """float32 logits of each prompt alone (no padding involved) from a torch model."""
  import torch  # pylint: disable=g-import-not-at-top
  out = []
  with torch.no_grad():
    for row, n in zip(ids, lengths):
      x = torch.tensor(np.asarray(row[:n], np.int64))[None]
      out.append(model(x).logits[0].float().numpy())
  return out
