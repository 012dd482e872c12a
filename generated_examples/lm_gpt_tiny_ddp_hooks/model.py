"""A GPT language model, written out plainly: what train.py, predict.py and export.py build.

The model maps token ids (batch, T) int64, T <= block_size, to next-token logits (batch, T,
vocab_size): token and position embeddings, n_layer pre-norm transformer blocks (causal
self-attention through scaled_dot_product_attention, then a 4x GELU MLP, each added to the
residual stream), a final LayerNorm, and an output layer that shares its weights with the token
embedding (weight tying, as GPT-2 does). The architecture and initialisation follow GPT-2
(Radford et al., 2019), as nanoGPT does; the code is our own.

The named sizes (SIZES) go from gpt_tiny, which trains on a CPU in seconds, to gpt2, the 124M
GPT-2 small (with GPT-2's 50257-token vocabulary; our tokenizers are smaller, and so is the
model). build_model() takes a size and overrides of its numbers (--n-layer, --n-head, --n-embd,
--block-size, --dropout). `scaffold add model NAME` writes a model of your own beside this one
and registers it in CUSTOM_MODELS.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from finetune import ModelError


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int  # the longest context the model reads (its position embeddings)
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which each position sees itself and the positions before it."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.proj_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        # (batch, length, 3 * width) -> three of (batch, n_head, length, head width)
        heads = self.qkv(x).view(batch, length, 3, self.n_head, width // self.n_head)
        query, key, value = heads.permute(2, 0, 3, 1, 4).unbind(0)
        attended = nn.functional.scaled_dot_product_attention(
            query, key, value, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        attended = attended.transpose(1, 2).reshape(batch, length, width)
        return self.proj_dropout(self.proj(attended))


class MLP(nn.Module):
    """Each position on its own: widen 4x, GELU, narrow back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.widen = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(nn.functional.gelu(self.widen(x))))


class Block(nn.Module):
    """One transformer block, pre-norm: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.n_embd)
        self.attention = CausalSelfAttention(config)
        self.mlp_norm = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """tokens (batch, T) int64 -> logits (batch, T, vocab_size), T at most block_size."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embedding = nn.Embedding(config.block_size, config.n_embd)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.final_norm = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight  # tied: one matrix, both ends
        init_weights(self)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        x = self.embedding_dropout(x)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.final_norm(x))


def init_weights(model: GPT) -> None:
    """GPT-2's initialisation: every weight matrix and embedding normal with std 0.02, biases
    zero, LayerNorms the identity; and the layers that write into the residual stream (each
    block's attention and MLP output projections) at std 0.02 / sqrt(2 * n_layer), so that the
    stream's variance does not grow with depth (the 2: two such additions per block)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    residual_std = 0.02 / math.sqrt(2 * model.config.n_layer)
    for block in model.blocks:
        nn.init.normal_(block.attention.proj.weight, mean=0.0, std=residual_std)
        nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=residual_std)


# The named sizes: (n_layer, n_head, n_embd, block_size); dropout 0 for all (set --dropout).
# With a 256-token vocabulary: gpt_tiny 0.11M parameters, gpt_mini 3.3M, gpt_small 10.8M (the
# shape of nanoGPT's Shakespeare character model), gpt2 86M (124M with GPT-2's own vocabulary).
SIZES = {
    "gpt_tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
    "gpt_mini": dict(n_layer=4, n_head=4, n_embd=256, block_size=256),
    "gpt_small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
}
# Models of your own (`scaffold add model NAME` registers them here): each class is built as
# Class(config) and its SIZE holds its defaults of SIZES' numbers.
CUSTOM_MODELS: dict[str, type[nn.Module]] = {}
MODEL_NAMES = [*SIZES, *CUSTOM_MODELS]
OVERRIDABLE = ("n_layer", "n_head", "n_embd", "block_size", "dropout")


def model_config(name: str, vocab_size: int, overrides: dict | None = None) -> GPTConfig:
    """The configuration of size `name` with `overrides` (None values keep the size's own);
    a combination that cannot work raises ModelError saying what to change."""
    if name not in MODEL_NAMES:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    unknown = set(overrides or {}) - set(OVERRIDABLE)
    if unknown:
        raise ModelError(
            f"cannot override {', '.join(sorted(unknown))} of a model; "
            f"only {', '.join(OVERRIDABLE)}"
        )
    chosen = {key: value for key, value in (overrides or {}).items() if value is not None}
    config = GPTConfig(vocab_size=vocab_size, **(size_of(name) | chosen))
    if vocab_size < 1:
        raise ModelError(
            f"a language model needs a vocabulary of at least 1 token, got {vocab_size}"
        )
    for field in ("block_size", "n_layer", "n_head", "n_embd"):
        if getattr(config, field) < 1:
            option = "--" + field.replace("_", "-")
            raise ModelError(f"{option} must be at least 1, got {getattr(config, field)}")
    if config.n_embd % config.n_head:
        raise ModelError(
            f"--n-embd {config.n_embd} does not split into --n-head {config.n_head} heads: "
            f"choose an --n-embd that is a multiple of {config.n_head}, or another --n-head"
        )
    if not 0 <= config.dropout < 1:
        raise ModelError(f"--dropout must be in [0, 1), got {config.dropout}")
    return config


def model_shape_problem(name: str, options: dict) -> str | None:
    """Why train.py's size options cannot make model `name`, or None when they can (checked
    before anything runs; the vocabulary, the data's, changes nothing here)."""
    try:
        model_config(name, 256, {key: options[key] for key in OVERRIDABLE})
    except ModelError as error:
        return str(error)
    return None


def size_of(name: str) -> dict:
    """The numbers model `name` has unless options override them: a named size, or the SIZE
    of a model of your own."""
    return SIZES[name] if name in SIZES else CUSTOM_MODELS[name].SIZE


def block_size_of(name: str | None, block_size: int | None) -> int:
    """The context length of a model: --block-size when given, else that of model `name`."""
    return block_size if block_size is not None else size_of(name)["block_size"]


# The options of train.py that build a model: a checkpoint without them cannot be rebuilt.
# vocab_size is the data's (dataset.options_from_data), not an option of the command line.
MODEL_OPTIONS = ("model", "vocab_size", *OVERRIDABLE)
HEADS: dict[str, str] = {}  # the output layer is the token embedding (tied): no separate head


def model_from_options(options: dict, pretrained: bool = True) -> nn.Module:
    """The model that train.py's options describe (vars(args), or a checkpoint's "args"). There
    are no pretrained weights to load: `pretrained` is for the tasks that have them."""
    overrides = {name: options[name] for name in OVERRIDABLE}
    return build_model(options["model"], options["vocab_size"], overrides)


def build_model(name: str, vocab_size: int, overrides: dict | None = None) -> nn.Module:
    """A new model `name` (a GPT of one of SIZES, or one of CUSTOM_MODELS) for a vocabulary of
    `vocab_size` tokens; `overrides` may set n_layer, n_head, n_embd, block_size and dropout
    (None: the model's own value)."""
    return CUSTOM_MODELS.get(name, GPT)(model_config(name, vocab_size, overrides))


def fsdp_blocks(model: nn.Module) -> list[nn.Module]:
    """The parts that --fsdp shards one at a time, so that one block's whole weights are gathered
    at a time (sharded.shard): the transformer blocks. A model without `blocks` is one part."""
    return list(getattr(model, "blocks", []))


@torch.no_grad()
def generate(
    model: nn.Module,
    tokens: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`tokens` (batch, T) followed by `max_new_tokens` more, each sampled from the model's
    distribution for the next token given at most the last block_size tokens: the logits divided
    by `temperature` (0: always the most likely token), only the `top_k` most likely kept when
    given. Draws come from `generator` (on the model's device): the same seed gives the same
    tokens. Runs the model as it is (call model.eval() first to turn off dropout)."""
    block_size = model.config.block_size
    for _ in range(max_new_tokens):
        logits = model(tokens[:, -block_size:])[:, -1, :].float()
        if temperature == 0:
            following = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.shape[-1]:
                kth_largest = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth_largest, -math.inf)
            probabilities = logits.softmax(dim=-1)
            following = torch.multinomial(probabilities, 1, generator=generator)
        tokens = torch.cat([tokens, following], dim=1)
    return tokens
