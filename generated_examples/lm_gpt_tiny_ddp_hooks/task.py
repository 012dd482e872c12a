"""The task this project trains: language modelling, the next token at every position. The one
module that knows it.

train.py, predict.py and export.py know nothing of tokens, losses or perplexity; they call this:

    BEST_METRIC, BEST_MODE     the validation metric that chooses best.pt, and "max" or "min"
    SHOWN                      the metrics printed on each epoch's line
    COLLATE                    how samples become a batch (None: stacked); the data sets
                               themselves are in dataset.py
    preprocessor(options, training) None: token ids go to the model as they are
    prepare(batch, device, preprocess) -> the batch's tensors on the device
    loss(model, batch)         -> (loss, parts): the training loss, the one definition of it
    validation_sums(model, batch) -> {name: tensor}, added up over every batch and process
    accumulate(totals, sums), gather(totals) how evaluate() adds them up over batches, then
                               over processes
    metrics(sums)              -> {name: number}, from the sums of the whole validation set
    example_input(options, batch_size) a batch of token ids the model takes (summary, export)
    inference_model(model)     the model as predict.py and export.py run it: tokens -> logits
    EXPORT_FORMATS, describe_io(options), export_metadata(state) for export.py
    generate_text(model, tokenizer, prompt, ...) for predict.py

A training batch is (inputs, targets): int64 token ids (batch, block_size), the targets the
inputs shifted by one token; a validation batch adds target_bytes (batch,), the UTF-8 bytes of
each window's counted targets (dataset.py). Targets of IGNORE_INDEX (-100) count in no loss or
metric: validation's last window marks those an earlier window already counted. The loss is the
mean cross-entropy of the next token over the targets that count.

The metrics come from three sums over the whole validation text: the summed negative
log-likelihood of every target token (nll), their number (tokens) and their UTF-8 bytes (bytes).
val_loss = nll / tokens, in nats per token; val_ppl = exp(val_loss); val_bpb, bits per byte =
nll / (ln 2 x bytes), which compares across tokenizers (a byte-level and a character-level model
of the same text have different losses per token, but the same text in bytes).

Validation is exact under torchrun: each process validates its own unpadded shard of the windows,
and the sums are added up across processes in one all_reduce before metrics() divides them; the
windows count every token of the validation text once (dataset.ValidationWindows). nanoGPT
instead estimates its loss from random batches.

Example: top-1 next-token accuracy as a metric. It needs one more sum, the correct predictions
among the counted targets, added where the other sums are made:

    # in validation_sums, before the return:
    counted = targets != IGNORE_INDEX
    correct = (logits.argmax(dim=-1) == targets)[counted].sum()
    # and "correct": correct in the returned dict

    # in metrics:
    "val_accuracy": sums["correct"].item() / max(sums["tokens"].item(), 1),

The new metric reaches metrics.jsonl, the trackers, plot.py and compare.py by itself; add it to
SHOWN to print it on each epoch's line, or set BEST_METRIC, BEST_MODE = "val_accuracy", "max" to
choose best.pt by it.
"""

import math

import torch
from torch import nn

import distributed
from dataset import IGNORE_INDEX, ByteTokenizer, CharTokenizer
from model import block_size_of, generate
from pipeline import DatasetError

BEST_METRIC, BEST_MODE = "val_loss", "min"
SHOWN = ("val_loss", "val_ppl", "val_bpb")
COLLATE = None
EXPORT_FORMATS = ("torchscript", "exported", "onnx")


def preprocessor(options: dict, training: bool = False) -> None:
    """What prepare() applies to a batch: nothing, for token ids (the image tasks augment)."""
    return None


def prepare(batch, device: torch.device, preprocess=None) -> tuple[torch.Tensor, ...]:
    """A batch from the loader, its tensors on `device` (`preprocess`: preprocessor()'s None)."""
    return tuple(tensor.to(device, non_blocking=True) for tensor in batch)


def token_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of the next token over the targets that are not IGNORE_INDEX: their sum
    ("sum") or mean (0 for a batch with none, where cross_entropy's own mean would be NaN).
    In float32 whatever the autocast dtype of the logits."""
    summed = nn.functional.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    if reduction == "sum":
        return summed
    return summed / (targets != IGNORE_INDEX).sum().clamp(min=1)


def loss(model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss to minimize (the mean next-token cross-entropy), and no named parts."""
    inputs, targets = batch[:2]
    return token_cross_entropy(model(inputs), targets), {}


def validation_sums(model: nn.Module, batch) -> dict[str, torch.Tensor]:
    """One batch's share of the validation metrics, as sums: the negative log-likelihood of its
    counted targets, their number, and their UTF-8 bytes."""
    inputs, targets, target_bytes = batch
    return {
        "nll": token_cross_entropy(model(inputs), targets, reduction="sum"),
        "tokens": (targets != IGNORE_INDEX).sum(),
        "bytes": target_bytes.sum(),
    }


def metrics(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """val_loss (nats per token), val_ppl (its exponential) and val_bpb (bits per UTF-8 byte)."""
    nll = sums["nll"].double()
    val_loss = nll / sums["tokens"].double().clamp(min=1)
    return {
        "val_loss": val_loss.item(),
        "val_ppl": val_loss.exp().item(),
        "val_bpb": (nll / (math.log(2) * sums["bytes"].double().clamp(min=1))).item(),
    }


# evaluate() adds up validation_sums over the batches, then over the processes (all_reduce).
accumulate, gather = distributed.add_sums, distributed.all_reduce_sums


def example_input(options: dict, batch_size: int, seed: int = 0) -> torch.Tensor:
    """A batch as the model sees one: random token ids (batch_size, block size) below
    options["vocab_size"], the size of the run's tokenizer's vocabulary."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, block_size_of(options["model"], options.get("block_size")))
    return torch.randint(0, options["vocab_size"], shape, dtype=torch.int64, generator=generator)


def inference_model(model: nn.Module) -> nn.Module:
    """The model as predict.py and export.py run it: token ids (batch, T) -> logits (batch, T,
    vocab_size). The GPT is that already."""
    return model


def describe_io(options: dict) -> dict:
    """What an exported model takes and returns (export.py's metadata). A name in a shape is a
    dimension of any size, up to its "max_sizes" entry: the batch, and the length T, which the
    position embeddings bound by the block size."""
    block_size = block_size_of(options["model"], options.get("block_size"))
    return {
        "input": {
            "name": "tokens",
            "shape": ["batch", "T"],
            "max_sizes": {"T": block_size},
            "dtype": "int64",
            "tokens": (
                "the text's token ids (tokenizer: kind byte, its UTF-8 bytes; kind char, each "
                f"character's index in chars); of a longer text, the last {block_size}"
            ),
        },
        "output": {
            "name": "logits",
            "shape": ["batch", "T", options["vocab_size"]],
            "next_token": "softmax(logits[:, -1] / temperature): the next token's probabilities",
        },
    }


def export_metadata(state: dict) -> dict:
    """What export.py's metadata says of checkpoint `state` besides its input and output: the
    tokenizer (as its state(), which dataset.tokenizer_from_state rebuilds) and the sizes."""
    options = state["args"]
    return {
        "tokenizer": state["tokenizer"],
        "vocab_size": options["vocab_size"],
        "block_size": block_size_of(options["model"], options.get("block_size")),
    }


# ---- predict.py --------------------------------------------------------------------------------


def generate_text(
    model: nn.Module,
    tokenizer: ByteTokenizer | CharTokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int,
    device: torch.device,
) -> str:
    """The text the model writes after `prompt`: `max_new_tokens` tokens sampled at
    `temperature` (0: the most likely each time) from the `top_k` most likely (None: all), drawn
    from `seed` on `device`, so the same seed gives the same text on the same device. Puts the
    model in eval mode. An empty prompt, or a character of it outside a char tokenizer's
    vocabulary, raises DatasetError (one line)."""
    if not prompt:
        raise DatasetError("the prompt is empty: give at least one character to start from")
    model.eval()
    tokens = torch.from_numpy(tokenizer.encode(prompt, "the prompt").astype("int64"))
    generator = torch.Generator(device=device).manual_seed(seed)
    written = generate(
        model, tokens[None].to(device), max_new_tokens, temperature, top_k, generator
    )
    return tokenizer.decode(written[0, len(tokens) :].tolist())
