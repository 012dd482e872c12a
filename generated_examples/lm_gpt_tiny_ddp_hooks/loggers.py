"""Where a run's metrics go: OUTPUT_DIR/metrics.jsonl always, and the trackers named by --logger.

train.py writes every record through one RunLog, which only rank 0 opens. A record is a dict with
"kind" ("step" or "epoch"), "step" (the optimizer step) and numbers, whichever metrics the task
logs: metrics.jsonl gets all of it, the trackers each int and float but the epoch and the step
(see numbers()). RunLog is a stateful object of the checkpoint: a resumed run continues the same
files and tracker runs, without duplicated or missing steps.

A tracker subclasses Tracker and is listed in TRACKERS under its --logger name:

    __init__(output_dir, state, params)  open it; `state` is what state_dict() returned when the
                                         checkpoint was saved ({} for a new run); `params`:
                                         {"project": name, "args": every option}
    write(record)                        one record
    state_dict() -> dict                 what a resumed run needs (a run id, a line count)
    close(checkpoint)                    the final checkpoint's path, or None when stopped early
"""

import importlib.util
import json
import logging
import os
import secrets
import time

from files import read_json, write_json

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


class Tracker:
    def __init__(self, output_dir: str, state: dict, params: dict):
        self.output_dir = output_dir

    def write(self, record: dict) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def close(self, checkpoint: str | None = None) -> None:
        pass


class JsonLines(Tracker):
    """OUTPUT_DIR/metrics.jsonl, one JSON object a line. A resumed run first drops the lines
    written after its checkpoint, so the file ends up as if the run had never stopped.

    The file stays open for the whole run (opening it for every line cost more than the rest of a
    logged step); each line is flushed as it is written.
    """

    def __init__(self, output_dir: str, state: dict, params: dict):
        super().__init__(output_dir, state, params)
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

    def close(self, checkpoint: str | None = None) -> None:
        self.file.close()


class TensorBoard(Tracker):
    """OUTPUT_DIR/tensorboard: the numbers of every record (see numbers()), as KIND/NAME against
    the step. A resumed run purges the events written after its checkpoint."""

    def __init__(self, output_dir: str, state: dict, params: dict):
        super().__init__(output_dir, state, params)
        from torch.utils.tensorboard import SummaryWriter

        self.step = state.get("step", 0)
        purge = self.step + 1 if state else None
        self.writer = SummaryWriter(os.path.join(output_dir, "tensorboard"), purge_step=purge)

    def write(self, record: dict) -> None:
        for name, value in numbers(record).items():
            self.writer.add_scalar(name, value, record["step"])
        self.step = record["step"]

    def state_dict(self) -> dict:
        return {"step": self.step}

    def close(self, checkpoint: str | None = None) -> None:
        self.writer.close()


class ResumableTracker(Tracker):
    """A tracker whose runs live outside the run folder (MLflow's store, W&B's servers), where
    nothing written can be taken back: its run id is kept in OUTPUT_DIR/NAME.json and in the
    checkpoint, and a resumed run skips the steps the tracker already holds."""

    name = ""

    def __init__(self, output_dir: str, state: dict, params: dict):
        super().__init__(output_dir, state, params)
        self.path = os.path.join(output_dir, f"{self.name}.json")
        # The file, written after every record, knows of records sent after the checkpoint.
        self.saved = {**state, **read_json(self.path)}
        self.logged = dict(self.saved.get("logged", {}))  # kind -> the last step written

    def write(self, record: dict) -> None:
        kind, step = record["kind"], record["step"]
        if step <= self.logged.get(kind, 0):
            return  # written before the run was interrupted, by the same bit-exact run
        self.send(record)
        self.logged[kind] = step
        write_json(self.path, self.state_dict())

    def send(self, record: dict) -> None:
        raise NotImplementedError


class MLflow(ResumableTracker):
    """--logger mlflow: an MLflow run in a local store, no server needed: sqlite:///DIR/mlflow.db
    in the folder that holds the run folders (runs/mlflow.db), or $MLFLOW_TRACKING_URI. See the
    runs with `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`."""

    name = "mlflow"

    def __init__(self, output_dir: str, state: dict, params: dict):
        super().__init__(output_dir, state, params)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its database set-up chatter

        parent = os.path.dirname(os.path.abspath(output_dir))
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or self.saved.get("tracking_uri")
        self.uri = self.uri or f"sqlite:///{os.path.join(parent, 'mlflow.db')}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id = self.saved.get("run_id")
        if self.run_id is None:
            project = params["project"]
            experiment = self.client.get_experiment_by_name(project)
            experiment_id = (
                experiment.experiment_id if experiment else self.client.create_experiment(project)
            )
            run = self.client.create_run(experiment_id, run_name=os.path.basename(output_dir))
            self.run_id = run.info.run_id
            options = [Param(key, str(value)) for key, value in sorted(params["args"].items())]
            self.client.log_batch(self.run_id, params=options)
        else:
            self.client.update_run(self.run_id, status="RUNNING")
        write_json(self.path, self.state_dict())

    def send(self, record: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(name, value, now, record["step"]) for name, value in numbers(record).items()
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def state_dict(self) -> dict:
        return {"run_id": self.run_id, "tracking_uri": self.uri, "logged": self.logged}

    def close(self, checkpoint: str | None = None) -> None:
        if checkpoint:
            self.client.set_tag(self.run_id, "checkpoint", os.path.abspath(checkpoint))
        self.client.set_terminated(self.run_id, "FINISHED" if checkpoint else "KILLED")


class WandB(ResumableTracker):
    """--logger wandb: a Weights & Biases run, offline unless you have logged in (`wandb login`)
    or set WANDB_MODE; its files are in OUTPUT_DIR/wandb (`wandb sync OUTPUT_DIR/wandb/offline-
    run-*` uploads an offline run later)."""

    name = "wandb"

    def __init__(self, output_dir: str, state: dict, params: dict):
        super().__init__(output_dir, state, params)
        import wandb

        self.run_id = self.saved.get("run_id") or secrets.token_hex(4)
        mode = None if "WANDB_MODE" in os.environ else "online" if wandb_logged_in() else "offline"
        self.run = wandb.init(
            project=params["project"],
            name=os.path.basename(output_dir),
            id=self.run_id,
            dir=output_dir,
            config=params["args"],
            resume="allow",
            mode=mode,
            settings=wandb.Settings(silent=True),
        )
        write_json(self.path, self.state_dict())

    def send(self, record: dict) -> None:
        self.run.log(numbers(record), step=record["step"])

    def state_dict(self) -> dict:
        return {"run_id": self.run_id, "logged": self.logged}

    def close(self, checkpoint: str | None = None) -> None:
        if checkpoint:
            self.run.summary["checkpoint"] = os.path.abspath(checkpoint)
        self.run.finish(exit_code=0 if checkpoint else 1)


# --logger NAME -> tracker class; jsonl is always on.
TRACKERS = {"jsonl": JsonLines, "tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}


def trackers_problem(names: list[str]) -> str | None:
    """Why the trackers `names` cannot be used here (an unknown name, a package not installed)."""
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        return f"unknown --logger {', '.join(unknown)}; choose from: {', '.join(TRACKERS)}"
    for name in names:
        package = PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            return f"--logger {name} needs the {package} package: pip install {package}"
    return None


class RunLog:
    """Every record of a run, to metrics.jsonl and each tracker; on rank 0 only (`enabled`)."""

    def __init__(self, output_dir: str, names: list[str], params: dict, enabled: bool = True):
        self.output_dir = output_dir
        self.names = ["jsonl", *(name for name in names if name != "jsonl")]
        self.params = params
        self.enabled = enabled
        self.saved: dict = {}
        self.trackers: dict[str, Tracker] = {}

    def open(self) -> None:
        """Open every tracker, continuing what load_state_dict() restored."""
        if not self.enabled:
            return
        try:
            for name in self.names:
                state = self.saved.get(name, {})
                self.trackers[name] = TRACKERS[name](self.output_dir, state, self.params)
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

    def close(self, checkpoint: str | None = None) -> None:
        """Close every tracker; `checkpoint` is the final one's path when the run finished."""
        for tracker in self.trackers.values():
            tracker.close(checkpoint)
        self.trackers = {}


AXES = ("kind", "epoch", "step")  # which record, and where: not metrics


def numbers(record: dict) -> dict[str, float]:
    """What the trackers get of a record: each of its numbers, int or float, as KIND/NAME, such as
    step/loss, epoch/val_loss, epoch/val_iou/3 (a per-class metric keeps its "/"). Left to
    metrics.jsonl: the bookkeeping AXES (the step is each tracker's own x axis), bools (ints to
    Python, but flags, not metrics), strings and nested dicts (the hook summaries). Ints arrive as
    floats, the one type every tracker stores."""
    kind = record["kind"]
    return {
        f"{kind}/{key}": float(value)
        for key, value in record.items()
        if key not in AXES and isinstance(value, int | float) and not isinstance(value, bool)
    }


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
