"""The language-modelling datasets: --dataset NAME -> (training set, validation set) of token
windows, and the tokenizers that make the tokens. DATASETS lists the names --dataset takes.

Tokenizers need no downloads. "byte" (the default) reads any file: its 256 tokens are the bytes
of the text. "char" has one token per character of the training text (the sorted unique
characters) and reads UTF-8 only; its vocabulary travels in the checkpoint (state(), and
tokenizer_from_state() to make it again), so predict.py needs nothing else.

--dataset text --data-dir PATH reads, whichever of these PATH is:
  - a folder with train.txt and val.txt: one split each;
  - any other folder: every file in it and its subfolders (sorted; hidden ones left out, empty
    ones skipped), each split where the last --val-fraction of its tokens begins: validation
    then holds every file in proportion, whatever their sizes and however few they are, and does
    not change with --seed, so runs of different seeds are compared on the same text;
  - one file: split the same way.
Files follow one another in a split as they are, with nothing between them. For "char", the
vocabulary comes from train.txt, or from all the text when we split it (a character that our cut
happens to put only in validation is not an error of yours).

The text is tokenized once, into memory-mapped token arrays (numpy.memmap of the smallest type
that holds the vocabulary: uint8 for "byte" and for up to 256 characters, then uint16 up to 65536)
in --cache-dir (default: beside the data, DATA_DIR-cache), with a manifest: the source files (as
files.fingerprint tells a changed file), the tokenizer and its state, the token counts. A source
that changes makes the next run rebuild them, with one line saying why. The arrays are written
under temporary names (files.atomic_write) and the manifest last, the old one removed first: a
kill while building leaves no manifest, and nothing that a later run trusts. Under torchrun the
first process of each machine builds, and the others wait for its manifest.

--dataset synthetic draws a small English-like language from a probabilistic grammar (seeded,
ASCII, no files): --synthetic-size characters to train on (= bytes = tokens for either
tokenizer), and --val-fraction times that many more, drawn from another seed, to validate on.

A training sample is a window of block_size + 1 tokens: (inputs, targets), int64 tensors of
block_size, targets the inputs shifted by one; the windows start every block_size tokens, and
pipeline.ShardedSampler shuffles their order per epoch. A validation sample is (inputs, targets,
target_bytes): windows at the same stride, and when the text does not end on one, a last window
that ends on the final token with the targets that earlier windows counted set to IGNORE_INDEX;
so every token of the validation text after the first is a target exactly once, and summed
losses over the windows divided by their counted targets are the exact loss of the split.
target_bytes is the number of UTF-8 bytes of the counted targets (for bits per byte).
"""

import glob
import hashlib
import os
import random
import sys
import time
from dataclasses import dataclass

import numpy
import torch
from torch.utils.data import Dataset, Subset

import distributed
import files
import signals
from files import WAIT_SECONDS, fingerprint
from model import block_size_of
from pipeline import DatasetError

IGNORE_INDEX = -100  # a target no loss or metric counts (cross_entropy's default ignore_index)
FORMAT = 1  # of the token cache's manifest; a cache of another format is rebuilt


# ---- tokenizers --------------------------------------------------------------------------------


def token_dtype(vocab_size: int) -> numpy.dtype:
    """The smallest unsigned integer type that holds every token id."""
    for dtype in (numpy.uint8, numpy.uint16, numpy.uint32):
        if vocab_size - 1 <= numpy.iinfo(dtype).max:
            return numpy.dtype(dtype)
    raise DatasetError(f"a vocabulary of {vocab_size} tokens is too large for this project")


class ByteTokenizer:
    """Tokens are the UTF-8 bytes of the text: 256 of them, and any file can be read."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str, source: str = "the text") -> numpy.ndarray:
        return self.encode_bytes(text.encode("utf-8"), source)

    def encode_bytes(self, data: bytes, source: str) -> numpy.ndarray:
        return numpy.frombuffer(data, dtype=numpy.uint8).copy()

    def decode(self, tokens) -> str:
        """Bytes that are not UTF-8 (a model's sample can cut a character) become U+FFFD."""
        return bytes(tokens).decode("utf-8", errors="replace")

    def token_bytes(self) -> numpy.ndarray:
        """How many bytes of text each token stands for: 1."""
        return numpy.ones(self.vocab_size, dtype=numpy.int64)

    def state(self) -> dict:
        return {"kind": self.kind}


class CharTokenizer:
    """One token per character of `chars`, the vocabulary: token i is chars[i]. Reads UTF-8 only."""

    kind = "char"

    def __init__(self, chars: str):
        self.chars = chars
        self.vocab_size = len(chars)
        # The characters' code points, sorted, for a searchsorted of a whole text at once.
        self.code_points = numpy.array([ord(char) for char in chars], dtype=numpy.uint32)
        if not numpy.all(self.code_points[1:] > self.code_points[:-1]):
            raise DatasetError("a character vocabulary must be sorted, each character once")

    @classmethod
    def from_texts(cls, texts) -> "CharTokenizer":
        """The vocabulary of every character in `texts`, sorted."""
        found = numpy.zeros(0, dtype=numpy.uint32)
        for text in texts:
            found = numpy.union1d(found, numpy.unique(code_points(text)))
        return cls("".join(map(chr, found.tolist())))

    def encode(self, text: str, source: str = "the text") -> numpy.ndarray:
        """The token ids of `text`; a character outside the vocabulary raises DatasetError,
        naming `source` and where in it the character is."""
        points = code_points(text)
        ids = numpy.searchsorted(self.code_points, points).clip(max=self.vocab_size - 1)
        unknown = numpy.flatnonzero(self.code_points[ids] != points)
        if len(unknown):
            offset = int(unknown[0])
            raise DatasetError(
                f"{source} has the character {text[offset]!r} (at character {offset}) that the "
                f"training text has not: the {self.vocab_size}-character vocabulary of "
                "--tokenizer char comes from the training text; add it there or remove it, or "
                "use --tokenizer byte"
            )
        return ids.astype(token_dtype(self.vocab_size))

    def encode_bytes(self, data: bytes, source: str) -> numpy.ndarray:
        return self.encode(decode_utf8(data, source), source)

    def decode(self, tokens) -> str:
        return "".join(self.chars[token] for token in tokens)

    def token_bytes(self) -> numpy.ndarray:
        """How many bytes of UTF-8 text each token stands for (1 to 4)."""
        return numpy.array([len(char.encode("utf-8")) for char in self.chars], dtype=numpy.int64)

    def state(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


TOKENIZERS = ("byte", "char")
TOKENIZERS_HELP = (
    "byte (256 tokens, the UTF-8 bytes: reads any file) or char (one token per character of the "
    "training text: UTF-8 only, a smaller vocabulary and shorter sequences)"
)


def tokenizer_from_state(state: dict) -> ByteTokenizer | CharTokenizer:
    """The tokenizer that `state()` describes (as a checkpoint holds it)."""
    if state.get("kind") == "byte":
        return ByteTokenizer()
    if state.get("kind") == "char":
        return CharTokenizer(state["chars"])
    raise DatasetError(
        f"unknown tokenizer {state.get('kind')!r}; choose one of: {', '.join(TOKENIZERS)}"
    )


def code_points(text: str) -> numpy.ndarray:
    return numpy.frombuffer(text.encode("utf-32-le"), dtype=numpy.uint32)


def decode_utf8(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"{source} is not UTF-8 (byte {error.start}: {data[error.start:error.end]!r}): "
            "--tokenizer char reads UTF-8 text only; convert or remove the file, or use "
            "--tokenizer byte, which reads any bytes"
        ) from None


# ---- windows of tokens -------------------------------------------------------------------------


class MappedTokens:
    """The tokens of one split in a file of the token cache: memory-mapped in each process (and
    DataLoader worker) on first use, never pickled. Indexed like the numpy array it holds."""

    def __init__(self, path: str, dtype: str, count: int):
        self.path = path
        self.dtype = numpy.dtype(dtype)
        self.count = count
        self._array = None

    @property
    def array(self) -> numpy.ndarray:
        if self._array is None:
            self._array = numpy.memmap(self.path, self.dtype, mode="r", shape=(self.count,))
        return self._array

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key):
        return self.array[key]


class Windows(Dataset):
    """Windows of block_size + 1 tokens of `tokens` (a numpy array or MappedTokens)."""

    def __init__(self, tokens, block_size: int, tokenizer: ByteTokenizer | CharTokenizer):
        self.tokens = tokens
        self.block_size = block_size
        self.tokenizer = tokenizer

    def window(self, start: int) -> torch.Tensor:
        """tokens[start : start + block_size + 1] as int64."""
        chunk = self.tokens[start : start + self.block_size + 1]
        return torch.from_numpy(chunk.astype(numpy.int64))


class TrainingWindows(Windows):
    """Sample i: (inputs, targets) of the window that starts at token i * block_size. The text's
    last tokens, short of a window, are left out."""

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.block_size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = self.window(index * self.block_size)
        return window[:-1], window[1:]


class ValidationWindows(Windows):
    """Sample i: (inputs, targets, target_bytes). Every token after the first is a counted target
    of exactly one window: the windows start every block_size tokens, and a last window, if the
    text does not end on one, ends at the final token with its first targets (counted by the
    window before) set to IGNORE_INDEX."""

    def __init__(self, tokens, block_size: int, tokenizer: ByteTokenizer | CharTokenizer):
        super().__init__(tokens, block_size, tokenizer)
        self.bytes_of = tokenizer.token_bytes()

    def __len__(self) -> int:
        return -(-(len(self.tokens) - 1) // self.block_size)  # ceil((tokens - 1) / block_size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        counted_from = index * self.block_size  # the targets up to it are earlier windows'
        start = min(counted_from, len(self.tokens) - 1 - self.block_size)
        window = self.window(start)
        targets = window[1:].clone()
        targets[: counted_from - start] = IGNORE_INDEX
        counted = targets[counted_from - start :].numpy()
        target_bytes = torch.tensor(int(self.bytes_of[counted].sum()), dtype=torch.int64)
        return window[:-1], targets, target_bytes


# ---- the synthetic language --------------------------------------------------------------------

# A small English-like grammar: sentences of a subject (a determiner, perhaps an adjective, a
# noun, perhaps a prepositional phrase) and a verb that agrees with it in number, with an object
# when the verb takes one; capitalized, ended by a full stop, a few to a paragraph. What a model
# can learn: the spelling of ~60 words, which word classes follow which, agreement across the
# adjective and the phrase between subject and verb, and the punctuation.
NUMBERS = ("singular", "plural")  # the order of each noun's and verb's two forms
DETERMINERS = {"singular": ("the", "a", "one", "this", "every"), "plural": ("the", "some", "two")}
NOUNS = (
    ("cat", "cats"), ("dog", "dogs"), ("bird", "birds"), ("child", "children"),
    ("mouse", "mice"), ("fox", "foxes"), ("farmer", "farmers"), ("tree", "trees"),
    ("river", "rivers"), ("house", "houses"), ("teacher", "teachers"), ("horse", "horses"),
)  # fmt: skip
ADJECTIVES = ("small", "big", "red", "old", "quiet", "happy", "green", "clever")
TRANSITIVE_VERBS = (
    ("sees", "see"), ("chases", "chase"), ("likes", "like"), ("finds", "find"),
    ("follows", "follow"), ("watches", "watch"), ("helps", "help"),
)  # fmt: skip
INTRANSITIVE_VERBS = (("sleeps", "sleep"), ("runs", "run"), ("sings", "sing"), ("waits", "wait"))
PREPOSITIONS = ("near", "under", "behind", "with")
ADVERBS = ("slowly", "today", "again", "quietly")


def noun_phrase(rng: random.Random, number: str, nested: bool = True) -> str:
    words = [rng.choice(DETERMINERS[number])]
    if rng.random() < 0.4:
        words.append(rng.choice(ADJECTIVES))
    singular, plural = rng.choice(NOUNS)
    words.append(singular if number == "singular" else plural)
    if nested and rng.random() < 0.2:
        words += [rng.choice(PREPOSITIONS), noun_phrase(rng, rng.choice(NUMBERS), nested=False)]
    return " ".join(words)


def clause(rng: random.Random) -> str:
    number = rng.choice(NUMBERS)
    words = [noun_phrase(rng, number)]
    index = NUMBERS.index(number)  # the verb's form that agrees with the subject
    if rng.random() < 0.6:
        words += [rng.choice(TRANSITIVE_VERBS)[index], noun_phrase(rng, rng.choice(NUMBERS))]
    else:
        words.append(rng.choice(INTRANSITIVE_VERBS)[index])
    if rng.random() < 0.2:
        words.append(rng.choice(ADVERBS))
    return " ".join(words)


def sentence(rng: random.Random) -> str:
    text = clause(rng)
    if rng.random() < 0.15:
        text += " and " + clause(rng)
    return text[0].upper() + text[1:] + "."


def synthetic_text(characters: int, seed: int) -> str:
    """`characters` characters of the synthetic language, drawn from `seed`: paragraphs of 2 to
    5 sentences, each on its own line."""
    rng = random.Random(seed)
    paragraphs, length = [], 0
    while length < characters:
        paragraphs.append(" ".join(sentence(rng) for _ in range(rng.randint(2, 5))) + "\n")
        length += len(paragraphs[-1])
    return "".join(paragraphs)[:characters]


def synthetic_alphabet() -> str:
    """Every character the synthetic language can hold: the vocabulary of --tokenizer char, so
    that it does not depend on --synthetic-size."""
    words = [
        *(word for choices in DETERMINERS.values() for word in choices),
        *(word for pair in NOUNS + TRANSITIVE_VERBS + INTRANSITIVE_VERBS for word in pair),
        *ADJECTIVES, *PREPOSITIONS, *ADVERBS, "and",
    ]  # fmt: skip
    letters = set("".join(words))
    return "".join(sorted(letters | {letter.upper() for letter in letters} | set(" .\n")))


# ---- building the datasets ---------------------------------------------------------------------


@dataclass
class Corpus:
    """The tokens of both splits (numpy arrays or MappedTokens) and their tokenizer; what to call
    each split in a message, and how to make a split longer."""

    train: numpy.ndarray | MappedTokens
    val: numpy.ndarray | MappedTokens
    tokenizer: ByteTokenizer | CharTokenizer
    train_name: str
    val_name: str
    lengthen: str


def synthetic_corpus(args) -> Corpus:
    """--synthetic-size characters from --seed to train on, --val-fraction as many from another
    seed to validate on; ASCII, so as many bytes and tokens."""
    if args.tokenizer == "char":
        tokenizer = CharTokenizer(synthetic_alphabet())
    else:
        tokenizer = ByteTokenizer()
    val_characters = round(args.synthetic_size * args.val_fraction)
    train = tokenizer.encode(synthetic_text(args.synthetic_size, args.seed))
    val = tokenizer.encode(synthetic_text(val_characters, args.seed + 10**6))
    names = ("the synthetic training text", "the synthetic validation text")
    return Corpus(train, val, tokenizer, *names, "raise --synthetic-size (or --val-fraction)")


def text_corpus(args) -> Corpus:
    """The text at --data-dir, tokenized by --tokenizer through the token cache."""
    data_dir = os.path.normpath(args.data_dir)
    cache_dir = getattr(args, "cache_dir", None) or f"{data_dir}-cache"
    sources = text_sources(data_dir, cache_dir)
    splits = sources[0][1] == "split"
    if splits and not 0 < args.val_fraction < 1:
        raise DatasetError(f"--val-fraction must lie between 0 and 1, got {args.val_fraction}")
    digest = hashlib.sha1(os.path.abspath(data_dir).encode()).hexdigest()[:8]
    base = os.path.join(cache_dir, f"text-{digest}-{args.tokenizer}")
    expected = {
        "format": FORMAT,
        "tokenizer": args.tokenizer,
        "val_fraction": args.val_fraction if splits else None,
        **fingerprint([path for path, _ in sources]),
    }
    manifest = read_manifest(base)
    if distributed.is_local_main_process():
        problem = stale(base, expected, manifest)
        if problem:
            print(f"{problem}: building it", file=sys.stderr)
            manifest = build_token_cache(base, sources, expected, args)
    else:
        while stale(base, expected, manifest):
            time.sleep(WAIT_SECONDS)
            manifest = read_manifest(base)
    distributed.barrier()
    tokenizer = tokenizer_from_state(manifest["tokenizer_state"])
    train, val = (
        MappedTokens(split_path(base, split), manifest["dtype"], manifest["tokens"][split])
        for split in ("train", "val")
    )
    if not splits:
        return Corpus(train, val, tokenizer, sources[0][0], sources[1][0], "add text to it")
    share = f"{args.val_fraction:g}"
    names = (
        f"the training text of {data_dir} (all but the last {share} of each file)",
        f"the validation text of {data_dir} (the last {share} of each file)",
    )
    return Corpus(train, val, tokenizer, *names, "add text (or raise --val-fraction)")


def text_sources(data_dir: str, cache_dir: str) -> list[tuple[str, str]]:
    """The files of --data-dir, each with its role: "train" and "val" (train.txt and val.txt),
    or "split" (every file of a folder, or the one file)."""
    if not os.path.exists(data_dir):
        raise DatasetError(
            f"--data-dir {data_dir} does not exist: pass a folder with train.txt and val.txt, a "
            "folder of text files, or one text file"
        )
    if not os.path.isdir(data_dir):
        return [(data_dir, "split")]
    pair = [os.path.join(data_dir, name) for name in ("train.txt", "val.txt")]
    if all(os.path.isfile(path) for path in pair):
        return [(pair[0], "train"), (pair[1], "val")]
    skipped = os.path.abspath(cache_dir)  # a --cache-dir inside the data is not data
    paths = []
    for folder, subfolders, names in os.walk(data_dir):
        subfolders[:] = [
            name
            for name in subfolders
            if not name.startswith(".") and os.path.abspath(os.path.join(folder, name)) != skipped
        ]
        paths += [
            os.path.join(folder, name)
            for name in names
            if not name.startswith(".") and os.path.isfile(os.path.join(folder, name))
        ]
    if not paths:
        raise DatasetError(
            f"no files in {data_dir}: put text files there (or train.txt and val.txt)"
        )
    return [(path, "split") for path in sorted(paths)]


def manifest_path(base: str) -> str:
    return f"{base}.json"


def split_path(base: str, split: str) -> str:
    return f"{base}.{split}.tokens"


def read_manifest(base: str) -> dict:
    """The manifest of the token cache at `base`, or {} when there is none (or it is not JSON):
    either way, the cache is built again."""
    try:
        return files.read_json(manifest_path(base))
    except ValueError:
        return {}


def stale(base: str, expected: dict, manifest: dict) -> str | None:
    """Why the token cache at `base` (whose manifest reads `manifest`, {} if none) cannot be used
    as it is, or None when it can."""
    if not manifest:
        return f"no token cache {manifest_path(base)} yet"
    for key in [key for key in expected if key not in ("sources", "replaced")]:
        if manifest.get(key) != expected[key]:
            return f"the token cache {base} has {key} {manifest.get(key)}, not {expected[key]}"
    if (manifest["sources"], manifest["replaced"]) != (expected["sources"], expected["replaced"]):
        return f"the token cache {base} is stale (its source files were added, changed or removed)"
    itemsize = numpy.dtype(manifest["dtype"]).itemsize
    for split, count in manifest["tokens"].items():
        path = split_path(base, split)
        if not os.path.isfile(path) or os.path.getsize(path) != count * itemsize:
            return f"the token cache {path} is not the size its manifest says"
    return None


def build_token_cache(base: str, sources: list[tuple[str, str]], expected: dict, args) -> dict:
    """Tokenize every source into BASE.train.tokens and BASE.val.tokens, then write the manifest
    BASE.json, which it returns."""
    check_not_empty(sources, args.data_dir)
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    for leftover in glob.glob(f"{glob.escape(base)}.*.tmp-*"):
        os.remove(leftover)  # from a build that was killed
    files.remove_quietly(manifest_path(base))  # first: a kill below then leaves no manifest
    try:
        tokenizer = make_tokenizer(args.tokenizer, sources)
        dtype = token_dtype(tokenizer.vocab_size)
        counts = {"train": 0, "val": 0}
        with (
            files.atomic_write(split_path(base, "train")) as train_file,
            files.atomic_write(split_path(base, "val")) as val_file,
        ):
            for path, role in sources:
                stop_if_asked(base)
                tokens = tokenizer.encode_bytes(read_bytes(path), path).astype(dtype, copy=False)
                if role == "train":
                    cut = len(tokens)
                elif role == "val":
                    cut = 0
                else:  # a file to split: its last --val-fraction validates
                    cut = len(tokens) - round(len(tokens) * args.val_fraction)
                train_file.write(numpy.ascontiguousarray(tokens[:cut]))
                val_file.write(numpy.ascontiguousarray(tokens[cut:]))
                counts["train"] += cut
                counts["val"] += len(tokens) - cut
        manifest = {**expected, "tokenizer_state": tokenizer.state(), "dtype": dtype.name}
        manifest["tokens"] = counts
        files.write_json(manifest_path(base), manifest)
    except OSError as error:
        raise DatasetError(
            f"could not write the token cache {base}: {error.strerror or error}; pass "
            "--cache-dir to put it elsewhere"
        ) from None
    what = f"{len(sources)} file{'s' if len(sources) > 1 else ''}"
    print(
        f"tokenized {what} into {counts['train']} training and {counts['val']} validation tokens "
        f"in {base}.*",
        file=sys.stderr,
    )
    return manifest


def check_not_empty(sources: list[tuple[str, str]], data_dir: str) -> None:
    """train.txt, val.txt or a single file must hold text; a folder's empty files are skipped,
    but not all of them may be empty."""
    if len(sources) == 1 or sources[0][1] == "train":
        for path, _ in sources:
            if os.path.getsize(path) == 0:
                raise DatasetError(f"{path} is empty: put text in it, or remove it")
    elif all(os.path.getsize(path) == 0 for path, _ in sources):
        raise DatasetError(f"every file in {data_dir} is empty: put text in them")


def make_tokenizer(kind: str, sources: list[tuple[str, str]]) -> ByteTokenizer | CharTokenizer:
    """--tokenizer's tokenizer; for "char", its vocabulary from the training text: train.txt, or
    all the files that are split."""
    if kind == "byte":
        return ByteTokenizer()
    training = [path for path, role in sources if role != "val"]
    return CharTokenizer.from_texts(read_text(path) for path in training)


def read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise DatasetError(f"cannot read {path}: {error.strerror or error}") from None


def read_text(path: str) -> str:
    return decode_utf8(read_bytes(path), path)


def stop_if_asked(base: str) -> None:
    """A stop signal (SIGINT, SIGTERM) while building ends the build between files."""
    number = signals.requested()
    if number:  # atomic_write removes what was written
        raise signals.Stopped(
            number,
            f"stopped by {signals.signal_name(number)} while building the token cache {base}: "
            "nothing kept; the next run builds it",
        )


CACHEABLE = ("text",)  # the datasets read from files (and kept tokenized in the token cache)
# --dataset NAME -> builder(args) -> Corpus: the tokens of both splits and their tokenizer.
DATASETS = {
    "synthetic": synthetic_corpus,
    "text": text_corpus,
}
DATASETS_HELP = (
    "synthetic (an English-like language drawn from a small grammar, --synthetic-size "
    "characters: learnable, no files), text (--data-dir: a folder with train.txt and val.txt, "
    "any other folder of text files, or one file; a folder's files and the one file are each "
    "split where their last --val-fraction begins)"
)


def build_datasets(args) -> tuple[TrainingWindows, ValidationWindows]:
    """The training and validation windows of --dataset at the block size of the model."""
    if args.dataset not in DATASETS:
        raise DatasetError(
            f"unknown dataset {args.dataset!r}; choose one of: {', '.join(DATASETS)}"
        )
    if args.tokenizer not in TOKENIZERS:
        raise DatasetError(
            f"unknown tokenizer {args.tokenizer!r}; choose one of: {', '.join(TOKENIZERS)}"
        )
    corpus = DATASETS[args.dataset](args)
    block_size = block_size_of(getattr(args, "model", None), getattr(args, "block_size", None))
    for tokens, name in ((corpus.train, corpus.train_name), (corpus.val, corpus.val_name)):
        if len(tokens) < block_size + 1:
            raise DatasetError(
                f"{name} has {len(tokens)} tokens, fewer than one window of --block-size "
                f"{block_size} + 1: {corpus.lengthen}, or pass a smaller --block-size"
            )
    return (
        TrainingWindows(corpus.train, block_size, corpus.tokenizer),
        ValidationWindows(corpus.val, block_size, corpus.tokenizer),
    )


def tokenizer_of(dataset: Dataset) -> ByteTokenizer | CharTokenizer:
    """The tokenizer of a dataset from build_datasets (for the checkpoint: tokenizer.state())."""
    if isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset.tokenizer


def options_from_data(dataset: Dataset) -> dict:
    """The model options that the data decides: the size of the tokenizer's vocabulary."""
    return {"vocab_size": tokenizer_of(dataset).vocab_size}


def checkpoint_metadata(dataset: Dataset) -> dict:
    """What each checkpoint keeps of the data: the tokenizer, all that predict.py needs."""
    return {"tokenizer": tokenizer_of(dataset).state()}
