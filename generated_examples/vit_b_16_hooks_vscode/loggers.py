"""Where a run's metrics go: OUTPUT_DIR/metrics.jsonl always, and the trackers named by --logger.

train.py writes every record through one RunLog, which only rank 0 opens. A record is a dict with
"kind" ("step" or "epoch"), "step" (the optimizer step) and numbers. RunLog is a stateful object of
the checkpoint: a resumed run continues the same files and tracker runs, without duplicated or
missing steps.

A tracker is a class with these methods (see TensorBoard below), listed in TRACKERS:

    __init__(output_dir, state)  open the tracker; `state` is what state_dict() returned before
                                 ({} for a new run), so a resumed run continues the same run
    write(record)                one record
    state_dict() -> dict         what a resumed run needs (a run id, the last step written)
    close()
"""

import json
import os


class LoggerError(Exception):
    """A tracker that cannot be used; the message says how to install it."""


class JsonLines:
    """OUTPUT_DIR/metrics.jsonl, one JSON object a line. A resumed run first drops the lines
    written after its checkpoint, so the file ends up as if the run had never stopped.

    The file stays open for the whole run (opening it for every line cost more than the rest of a
    logged step); each line is flushed as it is written.
    """

    def __init__(self, output_dir: str, state: dict):
        path = os.path.join(output_dir, "metrics.jsonl")
        lines = []
        if state.get("lines") and os.path.exists(path):
            with open(path) as file:
                lines = file.readlines()[: state["lines"]]
        self.file = open(path, "w")
        self.file.writelines(lines)
        self.file.flush()
        self.lines = len(lines)

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.lines += 1

    def state_dict(self) -> dict:
        return {"lines": self.lines}

    def close(self) -> None:
        self.file.close()


class TensorBoard:
    """OUTPUT_DIR/tensorboard: every number of every record, as KIND/NAME against the step.
    A resumed run purges the events after its checkpoint's step."""

    def __init__(self, output_dir: str, state: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise LoggerError(
                "--logger tensorboard needs the tensorboard package: pip install tensorboard"
            ) from None
        self.step = state.get("step", 0)
        purge = self.step + 1 if state else None
        self.writer = SummaryWriter(os.path.join(output_dir, "tensorboard"), purge_step=purge)

    def write(self, record: dict) -> None:
        for name, value in record.items():
            if isinstance(value, float):
                self.writer.add_scalar(f"{record['kind']}/{name}", value, record["step"])
        self.step = record["step"]

    def state_dict(self) -> dict:
        return {"step": self.step}

    def close(self) -> None:
        self.writer.close()


# --logger NAME -> tracker class; jsonl is always on.
TRACKERS = {"jsonl": JsonLines, "tensorboard": TensorBoard}


class RunLog:
    """Every record of a run, to metrics.jsonl and each tracker; on rank 0 only (`enabled`)."""

    def __init__(self, output_dir: str, names: list[str], enabled: bool = True):
        self.output_dir = output_dir
        self.names = ["jsonl", *(name for name in names if name != "jsonl")]
        self.enabled = enabled
        self.saved: dict = {}
        self.trackers: dict = {}

    def open(self) -> None:
        """Open every tracker, continuing what load_state_dict() restored."""
        if not self.enabled:
            return
        try:
            for name in self.names:
                self.trackers[name] = TRACKERS[name](self.output_dir, self.saved.get(name, {}))
        except BaseException:
            self.close()
            raise

    def write(self, record: dict) -> None:
        for tracker in self.trackers.values():
            tracker.write(record)

    def state_dict(self) -> dict:
        return {name: tracker.state_dict() for name, tracker in self.trackers.items()}

    def load_state_dict(self, state: dict) -> None:
        self.saved = state

    def close(self) -> None:
        for tracker in self.trackers.values():
            tracker.close()
        self.trackers = {}
