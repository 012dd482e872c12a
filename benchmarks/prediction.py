"""Figure 8: predict.py's throughput against a bare model(x) loop, in images per second.

One worker process (torch threads fixed, run.py --threads): a LeNet checkpoint written by the
generated train.py (a short run on fake data) and a folder of 32x32 RGB PNGs of random pixels.

predict.py: the generated predict.predict(args), unchanged and in-process, with
args = predict.parse_args([checkpoint, folder, --device cpu, --batch-size 64, --workers W]);
parse_args (which lists the images) runs before the timing. The wall time of the call holds all
that a run of predict.py does after its imports: reading the checkpoint and building the model,
starting W DataLoader worker processes (each call starts its own), opening and decoding every
PNG (PIL, then image_pipeline.image_transform: resize, crop, uint8 tensor), collating the
batches, image_pipeline.Preprocess (floats, normalized), the model in eval mode under
torch.no_grad, softmax and top-5 (task.Predictions), and one printed line per image (stdout sent
to /dev/null). W is 2, predict.py's default, and 0.

Bare loop: the same model (predict.load_trained_model: eval mode), under torch.no_grad, model(x)
over the same images already decoded and normalized, held in memory as float batches of 64: no
files, no decoding, no top-k, no printing. Only the model.

They take turns (the order reversed every other round), repeated; medians of images per second
on the wall clock. No target: the ratio is what predict.py's pipeline costs around the model.
Where the time goes, with 0 workers (everything in series on one thread): set-up (reading the
checkpoint and building the model) and decoding (ImageFiles[i] over every image) timed on their
own, the model from the bare loop, and the rest (collating, preprocessing, top-k, the printed
lines) as what remains of predict()'s time.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Context, Row, median, rate, run_worker, set_threads, worker_main  # noqa: E402

BATCH = 64  # predict.py's default --batch-size
WORKERS = [2, 0]  # predict.py's default --workers, then none


def measure(ctx: Context) -> list[Row]:
    config = {
        "project": str(ctx.projects["plain"]),
        "images": 512 if ctx.quick else 4096,
        "repeats": 1 if ctx.quick else 3,
        "threads": ctx.threads,
        "folder": str(ctx.work / "predict-images"),
    }
    ctx.log(f"predict.py: {config['images']} PNGs, {config['repeats']} rounds")
    ctx.record(
        8,
        "in-process train.main(): --model lenet --dataset fake --fake-size 64 --workers 0 "
        "--epochs 1 --max-steps 1 --device cpu --output-dir $WORK/...   # the checkpoint",
    )
    for workers in WORKERS:
        ctx.record(
            8,
            "in-process predict.predict(predict.parse_args([CHECKPOINT, "
            f"'$WORK/predict-images/train', '--device', 'cpu', '--batch-size', '{BATCH}', "
            f"'--workers', '{workers}']))",
        )
    ctx.record(
        8,
        f"in-process: with torch.no_grad(): for x in batches: model(x)   # batches of {BATCH} "
        "decoded, normalized images; model from predict.load_trained_model(CHECKPOINT)",
    )
    result = run_worker("prediction", config, ctx)
    count = result["images"]
    bare = median(result["rates"]["bare"])
    rows = []
    for workers in WORKERS:
        value = median(result["rates"][str(workers)])
        default = " (its default)" if workers == 2 else ""
        rows.append(
            Row(
                8,
                f"images/s, predict.py on {count} PNGs, lenet, batch {BATCH}, --workers "
                f"{workers}{default}",
                rate(value, "images/s"),
                rate(bare, "images/s") + " bare model(x) on decoded images",
                value / bare,
                "",
                "info",
                note=f"median of {len(result['rates'][str(workers)])} calls of predict.predict, "
                f"each {count / value:.2f} s; the bare loop {count / bare:.2f} s",
            )
        )
    per_image = 1e6 / median(result["rates"]["0"])
    setup = median(result["setup_seconds"]) * 1e6 / count
    decode = 1e6 / median(result["decode_rates"])
    model = 1e6 / bare
    rest = per_image - setup - decode - model
    rows.append(
        Row(
            8,
            "where predict.py's time goes per image, lenet, --workers 0",
            f"{per_image:.0f} µs: decoding {decode:.0f}, model {model:.0f}, set-up {setup:.0f}, "
            f"the rest {rest:.0f}",
            f"{model:.0f} µs (bare model(x))",
            per_image / model,
            "",
            "info",
            note=f"set-up (checkpoint read, model built) {median(result['setup_seconds']):.3f} s "
            f"a call, spread over {count} images; the rest: collating, Preprocess, softmax and "
            "top-k, a printed line per image",
        )
    )
    return rows


def worker(config: dict) -> dict:
    set_threads(config["threads"])
    import torch

    sys.path.insert(0, config["project"])
    import image_pipeline
    import predict
    import train
    from data_pipeline import make_images

    folder = Path(config["folder"])
    make_images(folder, config["images"])
    scratch = tempfile.mkdtemp(prefix="predict-", dir=os.getcwd())  # in run.py's scratch folder
    null = open(os.devnull, "w")  # for the whole worker process
    with contextlib.redirect_stdout(null):
        train.main([
            "--model", "lenet", "--dataset", "fake", "--fake-size", "64", "--workers", "0",
            "--epochs", "1", "--max-steps", "1", "--device", "cpu", "--output-dir", scratch,
        ])  # fmt: skip
    checkpoint = os.path.join(scratch, "last.pt")
    arguments = {
        workers: predict.parse_args([
            checkpoint, str(folder / "train"), "--device", "cpu", "--batch-size", str(BATCH),
            "--workers", str(workers),
        ])  # fmt: skip
        for workers in WORKERS
    }
    paths = arguments[0].images
    count = len(paths)

    model, state = predict.load_trained_model(checkpoint)
    files = predict.ImageFiles(paths, state["args"]["in_channels"], state["args"]["image_size"])
    preprocess = image_pipeline.Preprocess()
    batches = [
        preprocess(
            torch.stack([files[index][0] for index in range(start, min(start + BATCH, count))])
        )
        for start in range(0, count, BATCH)
    ]

    def run_predict(workers: int) -> float:
        start = time.perf_counter()
        with contextlib.redirect_stdout(null):
            results = predict.predict(arguments[workers])
        elapsed = time.perf_counter() - start
        assert len(results) == count, f"predict.py gave {len(results)} of {count} predictions"
        return count / elapsed

    @torch.no_grad()
    def run_bare() -> float:
        start = time.perf_counter()
        for images in batches:
            model(images)
        return count / (time.perf_counter() - start)

    def run_decode() -> float:
        start = time.perf_counter()
        for index in range(count):
            files[index]
        return count / (time.perf_counter() - start)

    def run_setup() -> float:
        start = time.perf_counter()
        predict.load_trained_model(checkpoint)
        return time.perf_counter() - start

    # One untimed round: lazy imports, the allocator, the page cache.
    run_predict(0), run_bare()
    kinds = [str(workers) for workers in WORKERS] + ["bare"]
    rates = {kind: [] for kind in kinds}
    decode_rates, setup_seconds = [], []
    for rep in range(config["repeats"]):
        for kind in kinds if rep % 2 == 0 else reversed(kinds):
            rates[kind].append(run_bare() if kind == "bare" else run_predict(int(kind)))
        decode_rates.append(run_decode())
        setup_seconds.append(run_setup())
    return {
        "images": count,
        "rates": rates,
        "decode_rates": decode_rates,
        "setup_seconds": setup_seconds,
    }


if __name__ == "__main__":
    worker_main(worker)
