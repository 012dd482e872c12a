"""Language modelling: the GPT is causal, tied and sized as said; the tokenizers round-trip and
travel as JSON; the token cache is built once, rebuilt when a source changes and never trusted
half-written; validation counts every token once, so its loss is exact; a shuffled epoch resumes
mid-way with the same windows; sampling is reproducible; and gpt_tiny learns the synthetic
language. Mistakes in the data are one line each."""

import json
import math
import os
import pickle
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import dataset
import finetune
import model
import task
from pipeline import DatasetError, ShardedSampler

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_args(**changes) -> SimpleNamespace:
    """The options build_datasets reads, as train.py's parser would give them."""
    options = dict(
        dataset="synthetic",
        data_dir=None,
        cache_dir=None,
        model="gpt_tiny",
        block_size=8,
        tokenizer="byte",
        val_fraction=0.25,
        synthetic_size=2000,
        seed=0,
    )
    return SimpleNamespace(**(options | changes))


def write(path, content: str | bytes) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(path, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as file:
        file.write(content)
    return str(path)


def all_tokens(windows) -> list[int]:
    return numpy.asarray(windows.tokens[:]).tolist()


# ---- the model ---------------------------------------------------------------------------------


def test_gpt_gives_logits_for_every_position_and_each_sees_only_the_past():
    torch.manual_seed(0)
    gpt = model.build_model("gpt_tiny", 256, {}).eval()
    tokens = torch.randint(0, 256, (2, 64))
    logits = gpt(tokens)
    assert logits.shape == (2, 64, 256) and logits.dtype == torch.float32
    assert gpt(tokens[:, :10]).shape == (2, 10, 256)
    changed = tokens.clone()
    changed[:, 40] = (changed[:, 40] + 1) % 256
    after = gpt(changed)
    assert torch.equal(after[:, :40], logits[:, :40])
    assert not torch.allclose(after[:, 40:], logits[:, 40:])


def test_the_output_layer_is_the_token_embedding():
    gpt = model.build_model("gpt_tiny", 256, {})
    assert gpt.lm_head.weight is gpt.token_embedding.weight
    names = [name for name, _ in gpt.named_parameters()]
    assert "token_embedding.weight" in names and "lm_head.weight" not in names


def test_parameter_counts_of_the_named_sizes():
    counts = {}
    for name in model.MODEL_NAMES:
        with torch.device("meta"):  # no memory, no time: only the shapes count
            counts[name] = sum(p.numel() for p in model.build_model(name, 256, {}).parameters())
    assert counts == {
        "gpt_tiny": 120_576,
        "gpt_mini": 3_290_624,
        "gpt_small": 10_844_160,
        "gpt2": 86_039_040,
    }
    with torch.device("meta"):
        gpt2 = model.build_model("gpt2", 50257, {})
    # GPT-2 small with its own vocabulary: nanoGPT's 123.65M plus the position embeddings.
    assert sum(p.numel() for p in gpt2.parameters()) == 124_439_808


def test_gpt2_initialisation_and_a_first_loss_near_uniform():
    torch.manual_seed(0)
    gpt = model.build_model("gpt_tiny", 256, {"n_layer": 8, "n_embd": 128})
    assert gpt.token_embedding.weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual = torch.cat([block.mlp.proj.weight.flatten() for block in gpt.blocks])
    assert residual.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert all(block.attention.qkv.bias.abs().sum() == 0 for block in gpt.blocks)
    tokens = torch.randint(0, 256, (4, 65))
    first_loss, _ = task.loss(gpt, (tokens[:, :-1], tokens[:, 1:]))
    assert first_loss.item() == pytest.approx(math.log(256), abs=0.1)


def test_overrides_change_a_size_and_none_keeps_it():
    config = model.model_config("gpt_tiny", 100, {"n_layer": 3, "n_head": None, "dropout": 0.1})
    assert config == model.GPTConfig(100, 64, n_layer=3, n_head=2, n_embd=64, dropout=0.1)
    assert model.block_size_of("gpt2", None) == 1024
    assert model.block_size_of("gpt2", 32) == 32


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("gpt_huge", {}, "unknown model 'gpt_huge'; choose one of: gpt_tiny, gpt_mini, "
         "gpt_small, gpt2"),
        ("gpt_tiny", {"n_embd": 100, "n_head": 3}, "--n-embd 100 does not split into --n-head 3 "
         "heads: choose an --n-embd that is a multiple of 3, or another --n-head"),
        ("gpt_tiny", {"n_layer": 0}, "--n-layer must be at least 1, got 0"),
        ("gpt_tiny", {"dropout": 1.0}, "--dropout must be in [0, 1), got 1.0"),
        ("gpt_tiny", {"width": 8}, "cannot override width of a model; only n_layer, n_head, "
         "n_embd, block_size, dropout"),
    ],
)  # fmt: skip
def test_impossible_models_are_one_line(name, overrides, message):
    with pytest.raises(finetune.ModelError) as error:
        model.build_model(name, 256, overrides)
    assert str(error.value) == message


def test_generation_is_reproducible_by_seed_and_greedy_at_temperature_zero():
    torch.manual_seed(0)
    gpt = model.build_model("gpt_tiny", 256, {"block_size": 16}).eval()
    prompt = torch.randint(0, 256, (1, 20))  # longer than the block: cropped

    def sample(seed, temperature=1.0, top_k=None):
        generator = torch.Generator().manual_seed(seed)
        return model.generate(gpt, prompt, 12, temperature, top_k, generator)

    first = sample(1)
    assert first.shape == (1, 32) and torch.equal(first[:, :20], prompt)
    assert torch.equal(sample(1), first)
    assert not torch.equal(sample(2), first)
    greedy = prompt
    for _ in range(12):
        following = gpt(greedy[:, -16:])[:, -1].argmax(dim=-1, keepdim=True)
        greedy = torch.cat([greedy, following], dim=1)
    assert torch.equal(sample(1, temperature=0), greedy)
    assert torch.equal(sample(2, temperature=0), greedy)
    assert torch.equal(sample(3, top_k=1), greedy)


def test_generate_text_is_the_same_for_the_same_seed():
    torch.manual_seed(0)
    gpt = model.build_model("gpt_tiny", 256, {})
    tokenizer = dataset.ByteTokenizer()
    cpu = torch.device("cpu")
    texts = [task.generate_text(gpt, tokenizer, "Once", 30, 1.0, 50, seed, cpu) for seed in (1, 1)]
    assert texts[0] == texts[1] and len(texts[0].encode("utf-8", "replace")) >= 10
    assert not gpt.training
    other = task.generate_text(gpt, tokenizer, "Once", 30, 1.0, 50, 2, cpu)
    assert other != texts[0]
    with pytest.raises(DatasetError) as error:
        task.generate_text(gpt, dataset.CharTokenizer("abc"), "abz", 5, 1.0, None, 0, cpu)
    assert str(error.value) == (
        "the prompt has the character 'z' (at character 2) that the training text has not: the "
        "3-character vocabulary of --tokenizer char comes from the training text; add it there or "
        "remove it, or use --tokenizer byte"
    )
    with pytest.raises(DatasetError, match="^the prompt is empty: give at least one character"):
        task.generate_text(gpt, tokenizer, "", 5, 1.0, None, 0, cpu)


# ---- tokenizers --------------------------------------------------------------------------------


def test_tokenizers_round_trip_and_travel_as_json():
    text = "Grüße, 世界!\nnaïve 🙂"
    byte = dataset.ByteTokenizer()
    assert byte.encode(text).tolist() == list(text.encode("utf-8"))
    assert byte.decode(byte.encode(text).tolist()) == text
    assert byte.decode([0x66, 0xFF, 0x6F]) == "f\ufffdo"  # a sample may cut a character
    char = dataset.CharTokenizer.from_texts([text, "abc"])
    assert char.chars == "".join(sorted(set(text + "abc")))
    assert char.encode(text).dtype == numpy.uint8
    assert char.decode(char.encode(text).tolist()) == text
    assert char.token_bytes()[char.encode("世")[0]] == 3
    for tokenizer in (byte, char):
        state = json.loads(json.dumps(tokenizer.state()))
        again = dataset.tokenizer_from_state(state)
        assert type(again) is type(tokenizer) and again.vocab_size == tokenizer.vocab_size
        assert again.encode(text).tolist() == tokenizer.encode(text).tolist()
    assert dataset.token_dtype(256) == numpy.uint8
    assert dataset.token_dtype(257) == numpy.uint16
    assert dataset.token_dtype(65536) == numpy.uint16
    assert dataset.token_dtype(65537) == numpy.uint32


# ---- text data ---------------------------------------------------------------------------------


def text_args(data_dir, **changes) -> SimpleNamespace:
    return data_args(**({"dataset": "text", "data_dir": str(data_dir)} | changes))


def test_train_and_val_files_are_one_split_each(tmp_path):
    write(tmp_path / "data" / "train.txt", "the training text, long enough\n")
    write(tmp_path / "data" / "val.txt", "validation text\n")
    write(tmp_path / "data" / "notes.md", "not read: train.txt and val.txt are the splits")
    train_set, val_set = dataset.build_datasets(text_args(tmp_path / "data"))
    assert bytes(all_tokens(train_set)) == b"the training text, long enough\n"
    assert bytes(all_tokens(val_set)) == b"validation text\n"
    assert len(train_set) == 30 // 8 and len(val_set) == math.ceil(15 / 8)
    inputs, targets = train_set[1]
    assert inputs.dtype == targets.dtype == torch.int64
    assert bytes(inputs.tolist()) == b"ning tex" and bytes(targets.tolist()) == b"ing text"
    assert isinstance(dataset.tokenizer_of(val_set), dataset.ByteTokenizer)
    # What a DataLoader worker gets: the file's name, not its tokens; it maps the file itself.
    copied = pickle.loads(pickle.dumps(train_set))
    assert copied.tokens._array is None and torch.equal(copied[1][0], inputs)
    assert os.path.isdir(f"{tmp_path / 'data'}-cache")


def test_a_folder_of_files_is_split_where_each_files_last_fraction_begins(tmp_path):
    write(tmp_path / "texts" / "b.txt", "B" * 40)
    write(tmp_path / "texts" / "a" / "one.py", "a" * 20)
    write(tmp_path / "texts" / "empty.txt", "")  # skipped
    write(tmp_path / "texts" / ".hidden", "h" * 40)  # left out
    write(tmp_path / "texts" / ".git" / "config", "g" * 40)  # left out
    train_set, val_set = dataset.build_datasets(text_args(tmp_path / "texts"))
    assert bytes(all_tokens(train_set)) == b"a" * 15 + b"B" * 30
    assert bytes(all_tokens(val_set)) == b"a" * 5 + b"B" * 10
    one_file, _ = dataset.build_datasets(text_args(tmp_path / "texts" / "b.txt"))
    assert bytes(all_tokens(one_file)) == b"B" * 30


def test_character_tokens_have_the_vocabulary_of_the_training_text(tmp_path):
    write(tmp_path / "data" / "train.txt", "abcab cabba ca bc\n" * 2)
    write(tmp_path / "data" / "val.txt", "cab a bc ab\n")
    train_set, val_set = dataset.build_datasets(text_args(tmp_path / "data", tokenizer="char"))
    tokenizer = dataset.tokenizer_of(train_set)
    assert tokenizer.chars == "\n abc"
    assert tokenizer.decode(all_tokens(val_set)) == "cab a bc ab\n"
    assert train_set.tokens.dtype == numpy.uint8


@pytest.mark.parametrize(
    ("files", "options", "message"),
    [
        ({}, {"data_dir": "{root}/missing"}, "--data-dir {root}/missing does not exist: pass a "
         "folder with train.txt and val.txt, a folder of text files, or one text file"),
        ({"d/train.txt": "", "d/val.txt": "x" * 20}, {}, "{root}/d/train.txt is empty: put text "
         "in it, or remove it"),
        ({"d/a.txt": "", "d/b.txt": ""}, {}, "every file in {root}/d is empty: put text in them"),
        ({"d/.a": "hidden"}, {}, "no files in {root}/d: put text files there (or train.txt and "
         "val.txt)"),
        ({"d/a.txt": "x" * 40, "d/b.txt": "ok\xff".encode("latin-1")}, {"tokenizer": "char"},
         "{root}/d/b.txt is not UTF-8 (byte 2: b'\\xff'): --tokenizer char reads UTF-8 text "
         "only; convert or remove the file, or use --tokenizer byte, which reads any bytes"),
        ({"d/train.txt": "abc " * 10, "d/val.txt": "abcd"}, {"tokenizer": "char"},
         "{root}/d/val.txt has the character 'd' (at character 3) that the training text has "
         "not: the 4-character vocabulary of --tokenizer char comes from the training text; add "
         "it there or remove it, or use --tokenizer byte"),
        ({"d/train.txt": "x" * 40, "d/val.txt": "short"}, {}, "{root}/d/val.txt has 5 tokens, "
         "fewer than one window of --block-size 8 + 1: add text to it, or pass a smaller "
         "--block-size"),
        ({"d/only.txt": "x" * 20}, {}, "the validation text of {root}/d (the last 0.25 of each "
         "file) has 5 tokens, fewer than one window of --block-size 8 + 1: add text (or raise "
         "--val-fraction), or pass a smaller --block-size"),
        ({"d/only.txt": "x" * 20}, {"val_fraction": 1.5}, "--val-fraction must lie between 0 and "
         "1, got 1.5"),
        ({}, {"dataset": "synthetic", "synthetic_size": 20}, "the synthetic validation text has 5 "
         "tokens, fewer than one window of --block-size 8 + 1: raise --synthetic-size (or "
         "--val-fraction), or pass a smaller --block-size"),
        ({}, {"dataset": "books"}, "unknown dataset 'books'; choose one of: synthetic, text"),
        ({}, {"tokenizer": "bpe"}, "unknown tokenizer 'bpe'; choose one of: byte, char"),
    ],
)  # fmt: skip
def test_data_mistakes_are_one_line(tmp_path, files, options, message):
    for name, content in files.items():
        write(tmp_path / name, content)
    data_dir = options.pop("data_dir", "{root}/d").format(root=tmp_path)
    with pytest.raises(DatasetError) as error:
        dataset.build_datasets(text_args(data_dir, **options))
    assert str(error.value) == message.format(root=tmp_path)


# ---- the token cache ---------------------------------------------------------------------------


def test_the_token_cache_is_built_once_and_rebuilt_when_a_source_changes(tmp_path, capsys):
    write(tmp_path / "d" / "one.txt", "first text " * 4)
    write(tmp_path / "d" / "two.txt", "second text " * 4)
    args = text_args(tmp_path / "d", cache_dir=str(tmp_path / "cache"))
    dataset.build_datasets(args)
    assert "no token cache" in capsys.readouterr().err
    built = sorted(os.listdir(tmp_path / "cache"))
    assert [name.split("-", 2)[-1] for name in built] == [
        "byte.json",
        "byte.train.tokens",
        "byte.val.tokens",
    ]
    manifest_file = tmp_path / "cache" / built[0]
    manifest = json.loads(manifest_file.read_text())
    assert manifest["tokens"] == {"train": 33 + 36, "val": 11 + 12}
    assert manifest["tokenizer_state"] == {"kind": "byte"} and manifest["dtype"] == "uint8"
    assert [source[0] for source in manifest["sources"]] == [
        str(tmp_path / "d" / "one.txt"),
        str(tmp_path / "d" / "two.txt"),
    ]
    modified = os.path.getmtime(manifest_file)

    train_set, _ = dataset.build_datasets(args)  # reused: nothing is built
    assert capsys.readouterr().err == ""
    assert os.path.getmtime(manifest_file) == modified
    assert bytes(all_tokens(train_set)).startswith(b"first text")

    write(tmp_path / "d" / "one.txt", "FIRST TEXT " * 4)  # the same size
    train_set, _ = dataset.build_datasets(args)
    assert "is stale (its source files were added, changed or removed)" in capsys.readouterr().err
    assert bytes(all_tokens(train_set)).startswith(b"FIRST TEXT")

    dataset.build_datasets(SimpleNamespace(**vars(args) | {"tokenizer": "char"}))
    assert "no token cache" in capsys.readouterr().err  # a cache for each tokenizer
    assert len(os.listdir(tmp_path / "cache")) == 6


# A build whose process dies (os._exit: no cleanup runs, as with kill -9) while it tokenizes the
# second file, after the first file's tokens are written.
KILLED_BUILD = """
import json, os, sys, types
import dataset
encode_bytes = dataset.ByteTokenizer.encode_bytes
def encode_then_die(self, data, source):
    if source.endswith("two.txt"):
        os._exit(9)
    return encode_bytes(self, data, source)
dataset.ByteTokenizer.encode_bytes = encode_then_die
dataset.build_datasets(types.SimpleNamespace(**json.loads(sys.argv[1])))
"""


def test_a_build_killed_midway_leaves_no_manifest_and_the_next_run_rebuilds(tmp_path, capsys):
    write(tmp_path / "d" / "one.txt", "first text " * 4)
    write(tmp_path / "d" / "two.txt", "second text " * 4)
    args = text_args(tmp_path / "d", cache_dir=str(tmp_path / "cache"))
    command = [sys.executable, "-c", KILLED_BUILD, json.dumps(vars(args))]
    killed = subprocess.run(command, env=os.environ | {"PYTHONPATH": PROJECT})
    assert killed.returncode == 9
    left = os.listdir(tmp_path / "cache")
    assert not [name for name in left if name.endswith(".json")]
    assert [name for name in left if ".tmp-" in name]  # the half-written token files
    train_set, val_set = dataset.build_datasets(args)
    assert "no token cache" in capsys.readouterr().err
    assert not [name for name in os.listdir(tmp_path / "cache") if ".tmp-" in name]
    assert len(all_tokens(train_set)) + len(all_tokens(val_set)) == 44 + 48


def test_processes_that_do_not_build_wait_for_the_manifest(tmp_path, monkeypatch, capsys):
    write(tmp_path / "d" / "text.txt", "some text to wait for " * 4)
    args = text_args(tmp_path / "d")
    is_first_process = [False]
    waits = []

    def first_process_builds_meanwhile(seconds):
        waits.append(seconds)
        if len(waits) == 2:
            is_first_process[0] = True
            dataset.build_datasets(args)
            is_first_process[0] = False

    monkeypatch.setattr(dataset.distributed, "is_local_main_process", lambda: is_first_process[0])
    monkeypatch.setattr(dataset, "time", SimpleNamespace(sleep=first_process_builds_meanwhile))
    train_set, _ = dataset.build_datasets(args)
    assert waits == [dataset.WAIT_SECONDS] * 2
    assert capsys.readouterr().err.count("no token cache") == 1  # the first process's build
    assert bytes(all_tokens(train_set)).startswith(b"some text to wait for")


# ---- validation is exact -----------------------------------------------------------------------


class Bigram(nn.Module):
    """Next-token logits from the current token alone: the exact loss of a whole text is then
    a sum over its consecutive pairs, whatever windows it is cut into."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.table(tokens)


@pytest.mark.parametrize("length", [41, 45, 9])  # 40 targets: 5 whole windows; 44; exactly 1
def test_validation_counts_every_target_once_and_its_loss_is_exact(tmp_path, length):
    text = ("naïve 世界 text " * 10)[:length]
    write(tmp_path / "d" / "train.txt", "naïve 世界 text " * 10)
    write(tmp_path / "d" / "val.txt", text)
    _, val_set = dataset.build_datasets(text_args(tmp_path / "d", tokenizer="char"))
    tokenizer = dataset.tokenizer_of(val_set)
    tokens = torch.from_numpy(tokenizer.encode(text).astype(numpy.int64))
    assert len(val_set) == math.ceil((length - 1) / 8)
    counted = sorted(
        start + position
        for index in range(len(val_set))
        for start in [min(index * 8, length - 9)]
        for position in (val_set[index][1] != dataset.IGNORE_INDEX).nonzero().flatten().tolist()
    )
    assert counted == list(range(length - 1))  # each target (offset from the window) once

    torch.manual_seed(0)
    bigram = Bigram(tokenizer.vocab_size)
    sums = {}
    with torch.no_grad():
        for batch in DataLoader(val_set, batch_size=2):
            for name, value in task.validation_sums(bigram, batch).items():
                sums[name] = sums.get(name, 0) + value.double()
        log_probabilities = bigram(tokens[:-1]).log_softmax(dim=-1)
        direct = -log_probabilities.gather(1, tokens[1:, None]).double().sum()
    assert sums["tokens"].item() == length - 1
    assert sums["bytes"].item() == len(text[1:].encode("utf-8"))
    assert sums["nll"].item() == pytest.approx(direct.item(), rel=1e-6)
    metrics = task.metrics(sums)
    assert metrics["val_loss"] == pytest.approx(direct.item() / (length - 1), rel=1e-6)
    assert metrics["val_ppl"] == pytest.approx(math.exp(metrics["val_loss"]), rel=1e-12)
    bits = direct.item() / math.log(2)
    assert metrics["val_bpb"] == pytest.approx(bits / len(text[1:].encode("utf-8")), rel=1e-6)


def test_the_training_loss_ignores_ignored_targets():
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, dataset.IGNORE_INDEX, 4], [0, 2, dataset.IGNORE_INDEX]])
    model_output = nn.Module()
    model_output.forward = lambda inputs: logits
    loss, parts = task.loss(model_output, (torch.zeros(2, 3, dtype=torch.int64), targets))
    kept = targets != dataset.IGNORE_INDEX
    expected = nn.functional.cross_entropy(logits[kept], targets[kept])
    assert parts == {} and loss.item() == pytest.approx(expected.item(), rel=1e-6)


# ---- an epoch resumes exactly ------------------------------------------------------------------


def test_a_shuffled_epoch_of_windows_resumes_midway_with_the_same_batches():
    train_set, _ = dataset.build_datasets(data_args(synthetic_size=1001))
    assert len(train_set) == 1000 // 8

    def batches(sampler, epoch, skip=0):
        sampler.set_epoch(epoch, skip)
        return [inputs for inputs, _ in DataLoader(train_set, batch_size=4, sampler=sampler)]

    uninterrupted = batches(ShardedSampler(len(train_set), True, seed=3), epoch=2)
    resumed = batches(ShardedSampler(len(train_set), True, seed=3), epoch=2, skip=5 * 4)
    assert len(resumed) == len(uninterrupted) - 5
    assert all(torch.equal(a, b) for a, b in zip(resumed, uninterrupted[5:], strict=True))
    other_epoch = batches(ShardedSampler(len(train_set), True, seed=3), epoch=3)
    assert not torch.equal(other_epoch[0], uninterrupted[0])
    # Two processes: every window of the epoch once between them (one repeated to even out).
    shares = [ShardedSampler(len(train_set), True, 3, rank, 2) for rank in (0, 1)]
    for share in shares:
        share.set_epoch(2)
    seen = [index for share in shares for index in share]
    assert sorted(set(seen)) == list(range(len(train_set))) and len(seen) == len(train_set) + 1


# ---- the synthetic language --------------------------------------------------------------------


def test_the_synthetic_language_is_seeded_and_sized_in_characters():
    text = dataset.synthetic_text(5000, seed=4)
    assert len(text) == 5000 and text == dataset.synthetic_text(5000, seed=4)
    assert text != dataset.synthetic_text(5000, seed=5)
    assert text.isascii() and set(text) <= set(dataset.synthetic_alphabet())
    assert text.startswith(dataset.synthetic_text(300, seed=4))
    sentence = text.split("\n")[0].split(". ")[0]
    assert sentence[0].isupper() and sentence.split()[0].lower() in {
        word for words in dataset.DETERMINERS.values() for word in words
    }
    train_set, val_set = dataset.build_datasets(data_args(synthetic_size=800, tokenizer="char"))
    assert len(all_tokens(train_set)) == 800 and len(all_tokens(val_set)) == 200
    assert dataset.tokenizer_of(train_set).chars == dataset.synthetic_alphabet()


def test_gpt_tiny_learns_the_synthetic_language():
    torch.manual_seed(0)
    args = data_args(synthetic_size=60_000, block_size=64, val_fraction=0.1)
    train_set, val_set = dataset.build_datasets(args)
    gpt = model.build_model("gpt_tiny", 256, {})
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=3e-3, weight_decay=0.0)
    sampler = ShardedSampler(len(train_set), True, seed=0)
    steps, started = 0, time.perf_counter()
    while steps < 300:
        sampler.set_epoch(steps)
        for batch in DataLoader(train_set, batch_size=16, sampler=sampler, drop_last=True):
            loss, _ = task.loss(gpt, batch)
            optimizer.zero_grad()
            loss.backward()
            # Without clipping some seeds stay on the plateau of letter frequencies (a loss of
            # about 2.95) for over 400 steps; with it, five seeds measured all passed 1.1 by 200.
            nn.utils.clip_grad_norm_(gpt.parameters(), 1.0)
            optimizer.step()
            steps += 1
            if steps == 300:
                break
    gpt.eval()
    sums = {}
    with torch.no_grad():
        for batch in DataLoader(val_set, batch_size=64):
            for name, value in task.validation_sums(gpt, batch).items():
                sums[name] = sums.get(name, 0) + value.double()
    metrics = task.metrics(sums)
    print(f"gpt_tiny, 300 steps: {metrics} in {time.perf_counter() - started:.1f} s")
    assert metrics["val_loss"] < 1.5  # from ln(256) = 5.55
    assert metrics["val_bpb"] == pytest.approx(metrics["val_loss"] / math.log(2))
