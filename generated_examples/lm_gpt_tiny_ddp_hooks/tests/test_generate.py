"""predict.py and export.py of a language model: a checkpoint alone generates text, the same seed
giving the same text and temperature 0 the greedy one; the prompt comes from an argument, a file
or stdin; mistakes are one line with the right exit code; every export format loads back and
matches the model on another batch size and length, and its metadata holds the tokenizer."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import checkpoint
import export
import model
import predict
import train
from dataset import tokenizer_from_state

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = 32  # tokens of context of the runs below
PROMPT = "The small dog"
SHORT = ["--max-new-tokens=16", "--device=cpu"]  # quick to generate: the tests compare texts


def train_run(folder, tokenizer: str, steps: int) -> str:
    """best.pt of a short gpt_tiny run on the synthetic language, with `tokenizer`."""
    train.main(
        [
            "--model=gpt_tiny",
            "--dataset=synthetic",
            f"--tokenizer={tokenizer}",
            f"--block-size={BLOCK}",
            "--synthetic-size=20000",
            f"--max-steps={steps}",
            "--epochs=1",
            "--workers=0",
            "--device=cpu",
            f"--output-dir={folder}",
        ]
    )
    return str(folder / "best.pt")


@pytest.fixture(scope="module")
def byte_run(tmp_path_factory) -> str:
    return train_run(tmp_path_factory.mktemp("byte"), "byte", steps=30)


@pytest.fixture(scope="module")
def char_run(tmp_path_factory) -> str:
    # Its own vocabulary is what matters here, not what it learnt: a few steps do.
    return train_run(tmp_path_factory.mktemp("char"), "char", steps=10)


def image_checkpoint(folder) -> str:
    """A checkpoint as an image task's train.py saves one: weights and options, no tokenizer."""
    path = os.path.join(folder, "image.pt")
    options = {"model": "resnet18", "num_classes": 10, "in_channels": 3, "image_size": 32}
    torch.save({"model": {"fc.bias": torch.zeros(10)}, "args": options}, path)
    return path


def reference_model(path: str) -> model.GPT:
    """The checkpoint's GPT in eval mode, built here from its options by hand."""
    state = checkpoint.load_checkpoint(path)
    options = state["args"]
    overrides = {name: options[name] for name in model.OVERRIDABLE}
    gpt = model.build_model(options["model"], options["vocab_size"], overrides)
    gpt.load_state_dict(state["model"])
    return gpt.eval()


@torch.no_grad()
def greedy(run_model, tokens: list[int], count: int) -> list[int]:
    """`count` tokens after `tokens`, each the most likely given the last BLOCK tokens."""
    tokens = list(tokens)
    for _ in range(count):
        logits = run_model(torch.tensor([tokens[-BLOCK:]]))
        tokens.append(int(logits[0, -1].argmax()))
    return tokens[-count:]


def fails(capsys, main, *argv: str) -> tuple[int, str]:
    """main(argv), which must stop with SystemExit: (exit code, stderr). sys.exit("error: ...")
    prints its message and exits 1 in a script; here the message is the exception's code."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(list(argv))
    code, err = stopped.value.code, capsys.readouterr().err
    if isinstance(code, str):
        return 1, err + code + "\n"
    return code, err


# ---- predict.py --------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_text_and_another_seed_another(byte_run, capsys):
    capsys.readouterr()
    first = predict.main([byte_run, PROMPT, "--seed=1", *SHORT])
    assert capsys.readouterr().out == first[0] + "\n"  # the prompt, then what follows it
    assert len(first) == 1 and first[0].startswith(PROMPT) and len(first[0]) > len(PROMPT)
    assert predict.main([byte_run, PROMPT, "--seed=1", *SHORT]) == first
    second = predict.main([byte_run, PROMPT, "--seed=2", *SHORT])
    assert second != first
    # Sample i of --samples is what --seed SEED+i writes alone, under a header line.
    capsys.readouterr()
    assert predict.main([byte_run, PROMPT, "--seed=1", "--samples=2", *SHORT]) == first + second
    assert capsys.readouterr().out == (
        f"--- sample 1 of 2 (--seed 1) ---\n{first[0]}\n"
        f"--- sample 2 of 2 (--seed 2) ---\n{second[0]}\n"
    )


def test_temperature_zero_is_the_greedy_continuation(byte_run):
    prompt = "the old cat sees a red bird near the dog and"  # longer than the block: its end
    assert len(prompt) > BLOCK
    expected = greedy(reference_model(byte_run), list(prompt.encode()), 16)
    text = prompt + bytes(expected).decode("utf-8", errors="replace")
    for seed in ("--seed=1", "--seed=2"):  # greedy draws nothing
        assert predict.main([byte_run, prompt, "--temperature=0", seed, *SHORT]) == [text]
    assert predict.main([byte_run, prompt, "--top-k=1", *SHORT]) == [text]


def test_the_prompt_comes_from_an_argument_a_file_or_stdin(byte_run, tmp_path, monkeypatch):
    prompt = "The small dog\n"  # exactly as given: the final newline too
    expected = predict.main([byte_run, prompt, "--seed=3", *SHORT])
    assert predict.main([byte_run, f"--prompt={prompt}", "--seed=3", *SHORT]) == expected
    (tmp_path / "prompt.txt").write_bytes(prompt.encode())
    from_file = ["--prompt-file", str(tmp_path / "prompt.txt")]
    assert predict.main([byte_run, *from_file, "--seed=3", *SHORT]) == expected
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(prompt.encode())))
    assert predict.main([byte_run, "-", "--seed=3", *SHORT]) == expected


def test_predict_runs_as_a_script(byte_run, tmp_path):
    expected = predict.main([byte_run, "Once", "--seed=4", *SHORT])[0]
    command = [sys.executable, "predict.py", byte_run, "-", "--seed=4", *SHORT]
    done = subprocess.run(
        command, cwd=PROJECT, input="Once", capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stderr, done.stdout) == (0, "", expected + "\n")
    # A failure: one line on stderr and exit 1, no traceback.
    image = image_checkpoint(tmp_path)
    command = [sys.executable, "predict.py", image, "Once"]
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"error: {image} has no tokenizer: it is not a language model's checkpoint (its model is "
        "'resnet18'); pass a checkpoint of this project's train.py\n"
    )


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["{run}"], "no prompt: give PROMPT, - to read it from standard input, or --prompt-file"),
        (["{run}", "x", "--prompt-file={text}"], "give the prompt once: as PROMPT, --prompt or "),
        (["{run}", "x", "--prompt=y"], "give the prompt once: as PROMPT, --prompt or --prompt-"),
        (["{run}", ""], "the prompt is empty: give at least one character to start from"),
        (["{run}", "--prompt-file={empty}"], "the prompt is empty: give at least one character"),
        (["{run}", "--prompt-file={missing}"], "--prompt-file {missing}: No such file or directo"),
        (["{run}", "--prompt-file={latin1}"], "--prompt-file {latin1} is not UTF-8 text (byte 2 "),
        (["{run}", "x", "--temperature=-0.5"], "argument --temperature: must be at least 0, got "),
        (["{run}", "x", "--top-k=0"], "argument --top-k: must be at least 1, got 0"),
        (["{missing}", "x"], "checkpoint {missing}: no such file"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(byte_run, tmp_path, capsys, arguments, message):
    names = {"run": byte_run, "missing": tmp_path / "missing"}
    for name, data in [("text", b"x"), ("empty", b""), ("latin1", "Grüße".encode("latin-1"))]:
        names[name] = tmp_path / f"{name}.txt"
        names[name].write_bytes(data)
    code, err = fails(capsys, predict.main, *(argument.format(**names) for argument in arguments))
    assert code == 2
    assert err.startswith(f"error: {message.format(**names)}")
    assert err.endswith(" (see python predict.py --help)\n") and err.count("\n") == 1


def test_a_checkpoint_that_cannot_generate_is_one_line_and_exits_1(byte_run, tmp_path, capsys):
    weights = tmp_path / "weights.pt"
    torch.save({"model": checkpoint.load_checkpoint(byte_run)["model"]}, weights)
    image = image_checkpoint(tmp_path)
    torn = tmp_path / "torn.pt"
    torn.write_bytes(Path(byte_run).read_bytes()[:1000])
    for path, line in [
        (weights, f"{weights} is not a checkpoint written by train.py (it lacks the model "),
        (image, f"{image} has no tokenizer: it is not a language model's checkpoint (its model "
         "is 'resnet18'); pass a checkpoint of this project's train.py\n"),
        (torn, f"cannot load checkpoint {torn}: not a complete file written by torch.save"),
    ]:  # fmt: skip
        for main, extra in [(predict.main, ["x"]), (export.main, ["--format=exported"])]:
            code, err = fails(capsys, main, str(path), *extra)
            assert code == 1 and err.startswith(f"error: {line}") and err.count("\n") == 1
    assert sorted(item.name for item in tmp_path.iterdir()) == ["image.pt", "torn.pt", "weights.pt"]


def test_a_char_level_run_generates_with_its_own_vocabulary(char_run, tmp_path, capsys):
    state = checkpoint.load_checkpoint(char_run)
    chars = state["tokenizer"]["chars"]
    assert state["tokenizer"]["kind"] == "char" and state["args"]["vocab_size"] == len(chars) < 80
    texts = predict.main([char_run, "the", "--seed=5", "--samples=2", *SHORT])
    for text in texts:
        assert text.startswith("the") and len(text) == 3 + 16  # a token is a character
        assert set(text) <= set(chars)
    code, err = fails(capsys, predict.main, char_run, "The dog!", *SHORT)
    assert (code, err) == (
        1,
        "error: the prompt has the character '!' (at character 7) that the training text has "
        f"not: the {len(chars)}-character vocabulary of --tokenizer char comes from the training "
        "text; add it there or remove it, or use --tokenizer byte\n",
    )
    # The export's metadata is all a program needs besides the file: its tokenizer, with the
    # exported model, writes predict.py's greedy text.
    output = tmp_path / "char.pt"
    export.main([char_run, "--format=torchscript", f"--output={output}"])
    metadata = json.loads((tmp_path / "char.pt.json").read_text())
    assert metadata["tokenizer"] == state["tokenizer"]
    assert metadata["output"]["shape"] == ["batch", "T", len(chars)]
    tokenizer = tokenizer_from_state(metadata["tokenizer"])
    with export.torchscript_warnings_off():
        scripted = torch.jit.load(str(output))
    written = greedy(scripted, tokenizer.encode("the").tolist(), 16)
    text = "the" + tokenizer.decode(written)
    assert predict.main([char_run, "the", "--temperature=0", *SHORT]) == [text]


# ---- export.py ---------------------------------------------------------------------------------


@torch.no_grad()
def run_exported(fmt: str, path, metadata: dict, tokens: torch.Tensor) -> torch.Tensor:
    """The exported file, loaded as a deployment would load it, on `tokens`."""
    if fmt == "torchscript":
        with export.torchscript_warnings_off():
            return torch.jit.load(str(path))(tokens)
    if fmt == "exported":
        return torch.export.load(str(path)).module()(tokens)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {metadata["input"]["name"]: tokens.numpy()}
    return torch.from_numpy(session.run([metadata["output"]["name"]], inputs)[0])


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_each_format_loads_back_and_matches_the_model(byte_run, tmp_path, capsys, fmt):
    if fmt == "onnx":
        for name in export.ONNX_PACKAGES:
            pytest.importorskip(name, reason=f"needs {name}: pip install -e '.[export]'")
    output = tmp_path / f"model{export.SUFFIXES[fmt]}"
    capsys.readouterr()
    export.main([byte_run, f"--format={fmt}", f"--output={output}"])
    assert f"wrote {output} and {output}.json" in capsys.readouterr().out
    metadata = json.loads((tmp_path / f"{output.name}.json").read_text())
    assert metadata["max_abs_difference"] <= 1e-4
    assert metadata["tokenizer"] == {"kind": "byte"}
    assert (metadata["vocab_size"], metadata["block_size"]) == (256, BLOCK)
    assert metadata["input"]["shape"] == ["batch", "T"]
    assert metadata["input"]["max_sizes"] == {"T": BLOCK}
    assert metadata["output"]["shape"] == ["batch", "T", 256]
    # 5 sequences of 11 tokens: neither the input traced (2 x 32) nor the one checked (3 x 16).
    tokens = torch.randint(0, 256, (5, 11), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = reference_model(byte_run)(tokens)
    logits = run_exported(fmt, output, metadata, tokens)
    assert logits.shape == expected.shape == (5, 11, 256)
    assert (logits - expected).abs().max().item() <= 1e-4
    assert sorted(item.name for item in tmp_path.iterdir()) == [output.name, f"{output.name}.json"]
