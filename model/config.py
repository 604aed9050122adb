"""Model hyper-parameters: one frozen dataclass (hashable, so static under jit) and presets."""

import dataclasses

POS_ENCODINGS = ("rope", "sinusoidal", "learned")
NORMS = ("rms", "layer")
NORM_POSITIONS = ("pre", "post")
ACTIVATIONS = ("swiglu", "gelu", "relu")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
ROUTER_WEIGHTINGS = ("softmax_topk", "topk_probs")
ROPE_SCALINGS = ("none", "linear", "llama3")
DTYPES = ("float32", "bfloat16")
# decoder: causal LM (GPT); encoder: bidirectional (BERT, masked-LM); encoder_decoder: T5-style.
ARCHS = ("decoder", "encoder", "encoder_decoder")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A transformer (decoder-only, encoder-only or encoder-decoder), dense or MoE.

  arch: "decoder" (causal LM), "encoder" (bidirectional self-attention, masked-LM /
  classification / embeddings) or "encoder_decoder" (encoder + causal decoder with
  cross-attention). The same blocks serve all three.

  n_experts == 0 gives a dense model. With n_experts > 0, every `moe_every`-th
  layer (the last of each group of `moe_every` layers) is an MoE layer.
  """
  vocab_size: int = 256
  arch: str = "decoder"
  d_model: int = 64
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int = 0  # 0 means n_heads (plain multi-head attention).
  d_head: int = 0  # 0 means d_model // n_heads.
  d_ff: int = 0  # 0 means a width that keeps the FFN at ~8*d^2 parameters.
  max_len: int = 256
  pos_encoding: str = "rope"
  rope_theta: float = 10_000.0
  # Rotary frequency scaling (model/layers.rope_inv_freq): "none", "linear" or "llama3".
  rope_scaling: str = "none"
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0  # llama3 only
  rope_high_freq_factor: float = 4.0  # llama3 only
  rope_original_max_len: int = 8192  # llama3 only: the pre-extension context
  # Optional biases (imported Hugging Face models): q/k/v, attention output, dense FFN.
  qkv_bias: bool = False
  out_bias: bool = False
  mlp_bias: bool = False
  norm: str = "rms"
  norm_position: str = "pre"
  norm_eps: float = 1e-6
  activation: str = "swiglu"
  tie_embeddings: bool = False
  dtype: str = "float32"  # compute dtype; parameters are always float32
  # Saving only matmul outputs for the backward ("dots") stores fewer and smaller scan
  # residuals than "none" and measured 1.2-1.5x faster train steps on CPU (BUILD_NOTES.md).
  remat: str = "dots"
  scan_layers: bool = True
  attention_impl: str = "auto"
  init_std: float = 0.02
  # Mixture-of-Experts.
  n_experts: int = 0
  experts_per_token: int = 2
  moe_every: int = 1
  d_ff_expert: int = 0  # 0 means d_ff.
  capacity_factor: float = 0.0  # <= 0 means dropless routing.
  n_shared_experts: int = 0
  load_balance_weight: float = 0.01
  router_z_loss_weight: float = 1e-3
  router_weighting: str = "softmax_topk"

  def __post_init__(self):
    _check_choice("arch", self.arch, ARCHS)
    _check_choice("pos_encoding", self.pos_encoding, POS_ENCODINGS)
    _check_choice("norm", self.norm, NORMS)
    _check_choice("norm_position", self.norm_position, NORM_POSITIONS)
    _check_choice("activation", self.activation, ACTIVATIONS)
    _check_choice("remat", self.remat, REMAT_POLICIES)
    _check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
    _check_choice("router_weighting", self.router_weighting, ROUTER_WEIGHTINGS)
    _check_choice("rope_scaling", self.rope_scaling, ROPE_SCALINGS)
    if self.rope_scaling != "none" and self.rope_factor <= 0:
      raise ValueError(f"model.rope_factor must be positive, got {self.rope_factor}")
    if self.rope_scaling == "llama3" and self.rope_high_freq_factor <= self.rope_low_freq_factor:
      raise ValueError("model.rope_high_freq_factor must exceed model.rope_low_freq_factor")
    _check_choice("dtype", self.dtype, DTYPES)
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_len"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
    if self.heads_kv <= 0 or self.n_heads % self.heads_kv:
      raise ValueError(
          f"model.n_heads={self.n_heads} must be a multiple of model.n_kv_heads="
          f"{self.heads_kv}; set --config.model.n_kv_heads to a divisor of n_heads")
    if self.d_head == 0 and self.d_model % self.n_heads:
      raise ValueError(
          f"model.d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
          "set --config.model.d_head explicitly or change n_heads")
    if self.pos_encoding == "rope" and self.head_dim % 2:
      raise ValueError(f"rotary embeddings need an even head dim, got {self.head_dim}")
    if self.n_experts:
      if not 1 <= self.experts_per_token <= self.n_experts:
        raise ValueError(
            f"model.experts_per_token={self.experts_per_token} must be in "
            f"[1, n_experts={self.n_experts}]")
      if self.moe_every < 1 or self.n_layers % self.moe_every:
        raise ValueError(
            f"model.n_layers={self.n_layers} must be a multiple of model.moe_every="
            f"{self.moe_every}")

  @property
  def heads_kv(self) -> int:
    return self.n_kv_heads or self.n_heads

  @property
  def head_dim(self) -> int:
    return self.d_head or self.d_model // self.n_heads

  @property
  def ffw_dim(self) -> int:
    """FFN hidden width; the default keeps GLU and plain FFNs at ~8*d^2 params."""
    if self.d_ff:
      return self.d_ff
    if self.activation == "swiglu":
      return _round_up(int(8 * self.d_model / 3), 8)
    return 4 * self.d_model

  @property
  def expert_ffw_dim(self) -> int:
    return self.d_ff_expert or self.ffw_dim

  @property
  def is_moe(self) -> bool:
    return self.n_experts > 0

  @property
  def n_moe_layers(self) -> int:
    return self.n_layers // self.moe_every if self.is_moe else 0

  def is_moe_layer(self, layer_index: int) -> bool:
    return self.is_moe and (layer_index % self.moe_every) == self.moe_every - 1


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def _check_choice(name: str, value: str, choices) -> None:
  if value not in choices:
    raise ValueError(f"model.{name}={value!r} is not one of {choices}")


_GPT2_VOCAB = 50304  # GPT-2's 50257 rounded up to a multiple of 128.

PRESETS = {
    # Test and CPU sizes.
    "tiny": ModelConfig(d_model=64, n_layers=2, n_heads=4, max_len=256),
    "small": ModelConfig(vocab_size=4096, d_model=256, n_layers=4, n_heads=4, max_len=512),
    # GPT-2 / GPT-3 family shapes (GELU FFN of width 4d, learned positions for 125m parity).
    "125m": ModelConfig(vocab_size=_GPT2_VOCAB, d_model=768, n_layers=12, n_heads=12,
                        max_len=1024, activation="gelu", norm="layer",
                        pos_encoding="learned", tie_embeddings=True),
    "350m": ModelConfig(vocab_size=_GPT2_VOCAB, d_model=1024, n_layers=24, n_heads=16,
                        max_len=1024, activation="gelu", norm="layer", tie_embeddings=True),
    "1b": ModelConfig(vocab_size=_GPT2_VOCAB, d_model=2048, n_layers=24, n_heads=16,
                      max_len=2048, activation="gelu", norm="layer", tie_embeddings=True),
    # Mixture-of-Experts: 8 experts, top-2.
    "moe_tiny": ModelConfig(d_model=64, n_layers=2, n_heads=4, max_len=256, n_experts=8,
                            experts_per_token=2, d_ff_expert=128),
    "moe_125m": ModelConfig(vocab_size=_GPT2_VOCAB, d_model=768, n_layers=12, n_heads=12,
                            max_len=1024, n_experts=8, experts_per_token=2,
                            moe_every=2, d_ff_expert=2048),
    "moe_1b": ModelConfig(vocab_size=_GPT2_VOCAB, d_model=1024, n_layers=16, n_heads=16,
                          max_len=2048, n_experts=8, experts_per_token=2,
                          d_ff_expert=2816, capacity_factor=1.25),
    # Encoder-only (BERT-style: bidirectional attention, masked-LM pretraining).
    "encoder_tiny": ModelConfig(arch="encoder", d_model=64, n_layers=2, n_heads=4,
                                max_len=256),
    "encoder_small": ModelConfig(arch="encoder", vocab_size=4096, d_model=256, n_layers=4,
                                 n_heads=4, max_len=512),
    # BERT-base shapes: post-norm LayerNorm, GELU 4d FFN, learned positions, tied output.
    "bert_base": ModelConfig(arch="encoder", vocab_size=30592, d_model=768, n_layers=12,
                             n_heads=12, max_len=512, activation="gelu", norm="layer",
                             norm_position="post", norm_eps=1e-12, pos_encoding="learned",
                             tie_embeddings=True),
    "moe_encoder_tiny": ModelConfig(arch="encoder", d_model=64, n_layers=2, n_heads=4,
                                    max_len=256, n_experts=8, experts_per_token=2,
                                    d_ff_expert=128),
    # Encoder-decoder (model/encoder_decoder.py): n_layers in each stack.
    "encoder_decoder_tiny": ModelConfig(arch="encoder_decoder", d_model=64, n_layers=2,
                                        n_heads=4, max_len=256),
    "encoder_decoder_small": ModelConfig(arch="encoder_decoder", vocab_size=4096, d_model=256,
                                         n_layers=4, n_heads=4, max_len=512),
    # T5-small shapes (rotary positions in place of T5's relative bias).
    "t5_small": ModelConfig(arch="encoder_decoder", vocab_size=32128, d_model=512, n_layers=6,
                            n_heads=8, d_ff=2048, activation="relu", max_len=512,
                            tie_embeddings=True),
    "moe_encoder_decoder_tiny": ModelConfig(arch="encoder_decoder", d_model=64, n_layers=2,
                                            n_heads=4, max_len=256, n_experts=8,
                                            experts_per_token=2, d_ff_expert=128),
}


def preset(name: str, **overrides) -> ModelConfig:
  """Returns the named preset with field overrides applied."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
  return dataclasses.replace(PRESETS[name], **overrides)


def require_single_stack(config: ModelConfig, what: str) -> None:
  """Refuses an encoder-decoder run in a tool that drives one stack (a decoder or an encoder)."""
  if config.arch == "encoder_decoder":
    raise ValueError(f"{what} does not support model.arch='encoder_decoder' yet; use a decoder "
                     "run, or evaluate a seq2seq run with infer.evaluate --suite/--eval_set "
                     "(generation), which does")


def compute_dtype(config: ModelConfig):
  import jax.numpy as jnp
  return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32



def strict_from_dict(cls, values: dict, where: str):
  """Builds dataclass `cls` from a dict (nested dataclasses too), refusing unknown keys.

  A key this code does not know would otherwise be dropped silently, and the object
  would describe a different model than the file.
  """
  import typing  # pylint: disable=g-import-not-at-top
  if not isinstance(values, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(values).__name__}")
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ValueError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; this run was "
                     f"written by another code version or the file was edited (known keys: "
                     f"{sorted(names)})")
  kwargs = {}
  for name, value in values.items():
    if dataclasses.is_dataclass(hints[name]):
      value = strict_from_dict(hints[name], value, f"{where}.{name}")
    kwargs[name] = value
  return cls(**kwargs)
