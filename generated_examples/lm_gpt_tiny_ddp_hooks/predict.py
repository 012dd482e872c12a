"""Generate text with a checkpoint of train.py: `python predict.py --help` lists every option.

    python predict.py runs/RUN/best.pt "The small dog" --max-new-tokens 100 --seed 1
    python predict.py runs/RUN/best.pt --prompt "The small dog"                  # the same
    python predict.py runs/RUN/best.pt --prompt-file prompt.txt --temperature 0  # greedy
    python predict.py runs/RUN/best.pt - < prompt.txt                            # from stdin

The model and its tokenizer are built from the checkpoint alone: its options, its weights and the
tokenizer's vocabulary. Printed is the prompt followed by what the model writes after it
(task.generate_text): --max-new-tokens tokens, each drawn at --temperature from the --top-k most
likely, with random numbers from --seed, so the same seed gives the same text (on the same
device). A prompt longer than the model's block size is read from its last block_size tokens.
A prompt from a file or stdin is taken exactly as it is, a final newline included.
"""

import sys
from contextlib import contextmanager

import torch
from torch import nn

import checkpoint
import distributed
import runs
import task
from dataset import tokenizer_from_state
from finetune import ModelError
from model import MODEL_OPTIONS, model_from_options
from options import MAX_SEED, HelpFormatter, Parser, count, real
from pipeline import DatasetError

EXPECTED_ERRORS = (checkpoint.CheckpointError, DatasetError, distributed.SetupError, OSError)
STDIN = "-"  # the PROMPT that reads the prompt from standard input


@contextmanager
def one_line_errors(*more_errors: type[Exception]):
    """Expected failures end as train.py's do: `error: ...` on stderr, exit code 1, no traceback."""
    try:
        yield
    except (*EXPECTED_ERRORS, *more_errors) as error:
        sys.exit(f"error: {error}")


def parse_args(argv=None):
    parser = Parser(
        prog="predict.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", help="a checkpoint written by train.py, such as best.pt")
    parser.add_argument(
        "prompt",
        nargs="?",
        help=f"the text to continue; {STDIN} reads it from standard input. Printed: the prompt, "
        "then what the model writes after it",
    )
    parser.add_argument("--prompt", dest="prompt_option", help="the prompt, as an option")
    parser.add_argument("--prompt-file", help="read the prompt from this UTF-8 file instead")
    parser.add_argument(
        "--max-new-tokens", type=count(1), default=200, help="tokens to write after the prompt"
    )
    parser.add_argument(
        "--temperature",
        type=real(0),
        default=1.0,
        help="below 1: likelier tokens, above 1: more varied; 0: always the most likely token",
    )
    parser.add_argument(
        "--top-k", type=count(1), help="draw from the K most likely tokens only (default: all)"
    )
    parser.add_argument(
        "--seed", type=count(0, MAX_SEED), default=0, help="the same seed gives the same text"
    )
    parser.add_argument(
        "--samples",
        type=count(1),
        default=1,
        help="texts to write, each under a header line; sample i is --seed SEED+i's text",
    )
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA if any"
    )
    parser.add_argument("--amp", action="store_true", help="bfloat16 on CPU, float16 on CUDA")
    args = parser.parse_args(argv)
    problem = options_problem(args)
    if problem:
        parser.error(problem)
    try:
        args.text = read_prompt(args.prompt or args.prompt_option, args.prompt_file)
    except DatasetError as error:
        parser.error(str(error))
    if not args.text:
        parser.error("the prompt is empty: give at least one character to start from")
    return args


def options_problem(args) -> str | None:
    """What makes these options unable to work (checked before the checkpoint is read)."""
    problem = runs.checkpoint_file_problem(args.checkpoint)
    if problem:
        return f"checkpoint {problem}"
    given = [args.prompt, args.prompt_option, args.prompt_file]
    if given.count(None) == len(given):
        return f"no prompt: give PROMPT, {STDIN} to read it from standard input, or --prompt-file"
    if len(given) - given.count(None) > 1:
        return "give the prompt once: as PROMPT, --prompt or --prompt-file"
    return None


def read_prompt(prompt: str | None, prompt_file: str | None) -> str:
    """The prompt as given: PROMPT itself, standard input for `-`, or the file's text."""
    if prompt_file is not None:
        source = f"--prompt-file {prompt_file}"
        try:
            with open(prompt_file, "rb") as file:
                data = file.read()
        except OSError as error:
            raise DatasetError(f"{source}: {error.strerror or error}") from None
    elif prompt == STDIN:
        source, data = "the prompt from standard input", sys.stdin.buffer.read()
    else:
        return prompt
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"{source} is not UTF-8 text (byte {error.start} is {data[error.start]:#04x})"
        ) from None


def load_trained_model(path: str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """The model of a train.py checkpoint, built from the checkpoint's own options, with its
    weights, in eval mode on `device`; and the checkpoint, whose "tokenizer" is the run's."""
    state = checkpoint.load_checkpoint(path)
    problem = checkpoint_problem(state)
    if problem:
        raise checkpoint.CheckpointError(f"{path} {problem}")
    try:
        model = model_from_options(state["args"], pretrained=False)
    except ModelError as error:
        raise checkpoint.CheckpointError(f"cannot build the model of {path}: {error}") from None
    checkpoint.load_weights(model, state, path)
    return model.to(device).eval(), state


def checkpoint_problem(state: dict) -> str | None:
    """Why `state` is not the checkpoint of a language model of train.py, or None."""
    options = state.get("args")
    if not isinstance(state.get("model"), dict) or not isinstance(options, dict):
        return (
            "is not a checkpoint written by train.py (it lacks the model weights or the options "
            "that built them): pass a last.pt, best.pt or step_*.pt of a run"
        )
    if not isinstance(state.get("tokenizer"), dict):
        # Every language model's checkpoint has one: the model's tokens mean nothing without it.
        return (
            f"has no tokenizer: it is not a language model's checkpoint (its model is "
            f"{options.get('model')!r}); pass a checkpoint of this project's train.py"
        )
    missing = [name for name in MODEL_OPTIONS if name not in options]
    if missing:
        return f"lacks the options that built its model ({', '.join(missing)})"
    return None


def predict(args) -> list[str]:
    """Write args.samples texts after args.text and print each; return them, prompt included."""
    ctx = distributed.setup(args.device)
    model, state = load_trained_model(args.checkpoint, ctx.device)
    tokenizer = tokenizer_from_state(state["tokenizer"])
    autocast = distributed.autocast_for(args.amp, ctx.device)
    texts = []
    for index in range(args.samples):
        seed = args.seed + index
        if args.samples > 1:
            print(f"--- sample {index + 1} of {args.samples} (--seed {seed}) ---")
        with autocast():
            written = task.generate_text(
                model,
                tokenizer,
                args.text,
                args.max_new_tokens,
                args.temperature,
                args.top_k,
                seed,
                ctx.device,
            )
        texts.append(args.text + written)
        print(texts[-1], flush=True)
    return texts


def main(argv=None) -> list[str]:
    """Parse, generate, print. Bad options exit 2, other failures 1: one line each."""
    args = parse_args(argv)
    with one_line_errors():
        return predict(args)


if __name__ == "__main__":
    main()
