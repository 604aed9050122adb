"""Parameter and FLOP counts of a ModelConfig: the one FLOP counter (pure Python).

Conventions (fixed; experiments and MFU depend on them):
- "embedding" parameters = token table + untied output projection + learned position
  table. Everything else (attention, FFN / experts / router, norms) is non-embedding.
- "active" parameters count, per MoE layer, only `experts_per_token` routed experts
  (plus the router and shared experts): what one token actually multiplies with.
- Training FLOPs per token = 3 x forward (backward = 2 x forward), one multiply-add = 2.
- method="exact" follows Chinchilla (Hoffmann et al. 2022) appendix F, per token:
    Q/K/V projections     2 * d * (n*h + 2*k*h)        (GQA-aware)
    attention logits      2 * seq_len * n*h            (QK^T, full seq_len x seq_len,
    softmax               3 * n * seq_len               causal masking NOT discounted,
    softmax @ V           2 * seq_len * n*h             exactly as Chinchilla counts)
    output projection     2 * n*h * d
    FFN                   2 * d * f * (3 if swiglu else 2)
    MoE FFN               2 * d * E (router) + (k_routed + n_shared) * expert FFN
    final logits          2 * d * V
  Unlike Chinchilla, the input embedding is not counted: it is a gather, not a matmul.
  Norms, residual adds, rotary and position additions are ignored (as Chinchilla does).
- method="6n" = 6 * active non-embedding params (include_embedding=True: 6 * active params).
- method="palm" = 6 * N + 12 * n_layers * (n_heads * head_dim) * seq_len (PaLM appendix B,
  with n_heads*head_dim in place of d_model, equal by default), where N is the same
  parameter count as "6n" (active non-embedding unless include_embedding=True).
"""

from model.config import ModelConfig

METHODS = ("exact", "6n", "palm")


def _norm_params(config: ModelConfig) -> int:
  return config.d_model * (1 if config.norm == "rms" else 2)


def _ffn_params(config: ModelConfig, width: int) -> int:
  return config.d_model * width * (3 if config.activation == "swiglu" else 2)


def _attention_params(config: ModelConfig) -> int:
  d, n, k, h = config.d_model, config.n_heads, config.heads_kv, config.head_dim
  return d * n * h + 2 * d * k * h + n * h * d


def _moe_params(config: ModelConfig, n_routed: int) -> int:
  """Router + `n_routed` routed experts + shared experts (all of expert_ffw_dim width)."""
  expert = _ffn_params(config, config.expert_ffw_dim)
  return config.d_model * config.n_experts + (n_routed + config.n_shared_experts) * expert


def param_counts(config: ModelConfig) -> dict:
  """Exact parameter counts of Transformer(config)'s parameter tree (see module doc)."""
  c = config
  embedding = c.vocab_size * c.d_model
  if not c.tie_embeddings:
    embedding += c.d_model * c.vocab_size
  if c.pos_encoding == "learned":
    embedding += c.max_len * c.d_model
  n_dense = c.n_layers - c.n_moe_layers
  shared = c.n_layers * (_attention_params(c) + 2 * _norm_params(c))
  if c.norm_position == "pre":
    shared += _norm_params(c)
  shared += n_dense * _ffn_params(c, c.ffw_dim)
  non_embedding = shared + c.n_moe_layers * _moe_params(c, c.n_experts)
  active_non_embedding = shared + c.n_moe_layers * _moe_params(c, c.experts_per_token)
  return {
      "total": embedding + non_embedding,
      "non_embedding": non_embedding,
      "embedding": embedding,
      "active": embedding + active_non_embedding,
      "active_non_embedding": active_non_embedding,
  }


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> int:
  """Chinchilla-style forward FLOPs per token (see module doc for the terms)."""
  c = config
  d, n, k, h = c.d_model, c.n_heads, c.heads_kv, c.head_dim
  d_attn = n * h
  attention = (2 * d * (d_attn + 2 * k * h)  # Q, K, V projections
               + 2 * seq_len * d_attn        # QK^T logits
               + 3 * n * seq_len             # softmax
               + 2 * seq_len * d_attn        # probs @ V
               + 2 * d_attn * d)             # output projection
  ffn = 2 * _ffn_params(c, c.ffw_dim)
  moe = 2 * _moe_params(c, c.experts_per_token)
  n_dense = c.n_layers - c.n_moe_layers
  logits = 2 * d * c.vocab_size
  return c.n_layers * attention + n_dense * ffn + c.n_moe_layers * moe + logits


def flops_per_token(config: ModelConfig, seq_len: int, method: str = "exact",
                    include_embedding: bool = False) -> int:
  """Training (forward + backward) FLOPs per token.

  include_embedding only affects "6n" and "palm" ("exact" always counts the output
  logits matmul and never the input lookup).
  """
  if method not in METHODS:
    raise ValueError(f"unknown FLOP method {method!r}; choose one of {METHODS}")
  if seq_len <= 0:
    raise ValueError(f"seq_len must be positive, got {seq_len}")
  if method == "exact":
    return 3 * forward_flops_per_token(config, seq_len)
  counts = param_counts(config)
  n = counts["active"] if include_embedding else counts["active_non_embedding"]
  flops = 6 * n
  if method == "palm":
    flops += 12 * config.n_layers * config.n_heads * config.head_dim * seq_len
  return flops


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops_total: float) -> float:
  """Model FLOPs utilisation: achieved model FLOP/s over the hardware peak (all chips)."""
  if peak_flops_total <= 0:
    raise ValueError(f"peak_flops_total must be positive, got {peak_flops_total}")
  return tokens_per_s * flops_per_token / peak_flops_total
