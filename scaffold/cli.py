"""The `scaffold` command line: parse, call the library, turn errors into one line and an exit code.

Exit codes: 0 ok, 1 runtime failure or conflict, 2 usage error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand

from scaffold import __version__
from scaffold.catalog import DATASETS, DEFAULT_TASK, MODELS, TASKS, task_datasets, task_models
from scaffold.errors import ScaffoldError, UsageError

CONTEXT = {"help_option_names": ["-h", "--help"]}


class Command(TyperCommand):
    """Arguments shown by their metavar alone, `DEST` and `[NAME]`, on every Typer.

    Newer Typers write a required argument as `{DEST}` in the usage line and add its type,
    `DEST <path>`, in the list of arguments; Click's own help, which older Typers use, does not.
    Only public Click methods are overridden, so this holds on Typers with and without their own
    copy of Click.
    """

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = metavar(param)
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_options(self, ctx: typer.Context, formatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {"Arguments": [], "Options": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                # Written here: Typer 0.15 escapes "[required]" for rich markup even when
                # rich_markup_mode is None, and later ones add the type.
                text = (getattr(param, "help", None) or "").strip()
                if param.required:
                    text = f"{text}  [required]".strip()
                sections["Arguments"].append((metavar(param), text))
            else:
                sections["Options"].append(record)
        for title, rows in sections.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def metavar(param) -> str:
    return param.metavar or (param.name or "").upper()


app = typer.Typer(
    help="Write PyTorch training projects that train the moment they are generated.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings=CONTEXT,
)
list_app = typer.Typer(help="List what can be chosen.", invoke_without_command=True)
app.add_typer(list_app, name="list")

# One spelling of -C for every command that works on an existing project.
ProjectDir = Annotated[
    Path | None,
    typer.Option(
        "-C",
        "--directory",
        metavar="DIR",
        help="Use the project at or above DIR, not the current one.",
    ),
]


def by_task(choices, default: str) -> str:
    """Each task's choices and its default, for a help text: `choices(task)` gives the names,
    `default` names the TaskSpec attribute that holds the task's default."""
    return "; ".join(
        f"{task}: {', '.join(choices(task))} (default {getattr(spec, default)})"
        for task, spec in TASKS.items()
    )


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"scaffold {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=show_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Write PyTorch training projects that train the moment they are generated."""


@app.command(cls=Command)
def new(
    ctx: typer.Context,
    dest: Annotated[
        Path,
        typer.Argument(
            metavar="DEST", help="Where to create the project; its last part is the name."
        ),
    ],
    task: Annotated[
        str,
        typer.Option(
            metavar="TASK",
            help=f"What the project learns: {', '.join(TASKS)} (scaffold list tasks).",
        ),
    ] = DEFAULT_TASK,
    # None: the task's default, which NewProject fills in (scaffold/options.py).
    model: Annotated[
        str | None,
        typer.Option(
            metavar="MODEL",
            help=f"Default model for train.py, by task: {by_task(task_models, 'default_model')}.",
        ),
    ] = None,
    num_classes: Annotated[int, typer.Option(metavar="N", help="Number of classes.")] = 10,
    in_channels: Annotated[int, typer.Option(metavar="N", help="Image channels.")] = 3,
    image_size: Annotated[
        int, typer.Option(metavar="PIXELS", help="Image height and width in pixels.")
    ] = 32,
    dataset: Annotated[
        str | None,
        typer.Option(
            metavar="DATASET",
            help="Default dataset for train.py, by task: "
            f"{by_task(task_datasets, 'default_dataset')}.",
        ),
    ] = None,
    ddp: Annotated[
        bool, typer.Option("--ddp/--no-ddp", help="Multi-process training (torchrun).")
    ] = False,
    vscode: Annotated[
        bool, typer.Option("--vscode/--no-vscode", help="Write .vscode/launch.json.")
    ] = True,
    hooks: Annotated[
        bool, typer.Option("--hooks/--no-hooks", help="Ship the hooks/ package.")
    ] = True,
    git: Annotated[
        bool, typer.Option("--git/--no-git", help="git init and commit the project.")
    ] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the files, write nothing.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Allow a non-empty DEST (never overwrites uncommitted changes)."
        ),
    ] = False,
    interactive: Annotated[
        bool, typer.Option("--interactive", help="Ask the questions on a TTY.")
    ] = False,
) -> None:
    """Create a new training project at DEST."""
    from scaffold.options import NewProject, answer_names
    from scaffold.render import create_project

    # The answers are read from ctx.params by NewProject's field names, so that the list of
    # choices is written down once (scaffold/options.py); the parameters above only parse them.
    names = answer_names()
    # Interactively, copier asks every question the command line did not answer.
    answered = frozenset(
        name
        for name in names
        if not interactive or ctx.get_parameter_source(name).name == "COMMANDLINE"
    )
    project = NewProject(dest=dest, answered=answered, **{name: ctx.params[name] for name in names})
    rendered = create_project(
        project, force=force, git=git, dry_run=dry_run, interactive=interactive
    )
    verbs = {
        name: ("overwrite" if name in rendered.replaced else "create") for name in rendered.files
    }
    if dry_run:
        verbs = {name: f"would {verb}" for name, verb in verbs.items()}
    width = max([12, *map(len, verbs.values())])
    for name, verb in verbs.items():
        typer.echo(f"{verb:>{width}}  {name}")
    if not dry_run:
        typer.echo(f"\nCreated {dest}. Next: cd {dest} && python train.py --epochs 1 --max-steps 3")


@list_app.callback()
def list_kinds(ctx: typer.Context) -> None:
    """List what can be chosen."""
    if ctx.invoked_subcommand is not None:
        return
    group = ctx.command
    for name in group.list_commands(ctx):
        typer.echo(f"{name:<10} {group.get_command(ctx, name).get_short_help_str(limit=80)}")
    typer.echo("\nRun `scaffold list KIND`, e.g. scaffold list models.")


# Which task `list models` and `list datasets` show; none: every task's.
TaskFilter = Annotated[
    str | None,
    typer.Option("--task", metavar="TASK", help="Only this task's (default: every task's)."),
]


def chosen_tasks(task: str | None) -> list[str]:
    if task is None:
        return list(TASKS)
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    return [task]


@list_app.command("tasks")
def list_tasks() -> None:
    """The tasks `--task` accepts."""
    for spec in TASKS.values():
        typer.echo(f"{spec.name:<15} {spec.description}")


@list_app.command("models")
def list_models(task: TaskFilter = None) -> None:
    """The models `--model` accepts, by task."""
    width = max(map(len, MODELS))
    for spec in [spec for name in chosen_tasks(task) for spec in task_models(name).values()]:
        rule = f"; --image-size a multiple of {spec.size_multiple}" if spec.size_multiple else ""
        least = f"min image {spec.min_image_size:<3}" if TASKS[spec.task].images else " " * 13
        typer.echo(
            f"{spec.name:<{width}}  {spec.task:<14}  {spec.source:<11}  "
            f"{least}  {spec.description}{rule}"
        )


@list_app.command("datasets")
def list_datasets(task: TaskFilter = None) -> None:
    """The datasets `--dataset` accepts, by task."""
    width = max(map(len, DATASETS))
    for spec in [spec for name in chosen_tasks(task) for spec in task_datasets(name).values()]:
        typer.echo(f"{spec.name:<{width}}  {spec.task:<14}  {spec.description}")


@list_app.command("variants")
def list_variants() -> None:
    """The option combinations CI renders and tests (scaffold/variants.py)."""
    from scaffold.variants import describe

    for line in describe():
        typer.echo(line)


@app.command(cls=Command)
def add(
    component: Annotated[
        str, typer.Argument(metavar="COMPONENT", help="hook, model, dataset, launch or slurm.")
    ],
    name: Annotated[
        str | None,
        typer.Argument(
            metavar="NAME", help="Its name (hook: default from --kind; none for launch, slurm)."
        ),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            metavar="KIND",
            help="hook only: activations, gradients, nan_check or custom (the default).",
        ),
    ] = None,
    directory: ProjectDir = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan, write nothing.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite files you have changed.")
    ] = False,
) -> None:
    """Add a hook, model, dataset, VS Code launch.json or SLURM script to this project."""
    from scaffold.add import add_component

    add_component(
        component,
        name,
        kind=kind,
        directory=directory,
        dry_run=dry_run,
        force=force,
        echo=typer.echo,
    )


@app.command(cls=Command)
def doctor() -> None:
    """Check that generated projects can run here: Python, torch, CUDA, backends, git."""
    from scaffold.doctor import check  # torch is imported in a child process, never here

    report = check()
    for line in report.lines:
        typer.echo(line)
    if report.problems:
        raise ScaffoldError(report.summary())
    typer.echo("ok: generated projects can run here")


@app.command(cls=Command)
def update(
    directory: ProjectDir = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to", metavar="VERSION", help="Template version (default: the installed one)."
        ),
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set", metavar="KEY=VALUE", help="Change an answer, e.g. ddp=true (repeatable)."
        ),
    ] = None,
    conflict: Annotated[
        str,
        typer.Option(
            "--conflict",
            metavar="MODE",
            help="inline: conflict markers in the file; rej: a .rej file beside it.",
        ),
    ] = "inline",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would change, change nothing.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Delete files you changed that a --set answer drops."),
    ] = False,
) -> None:
    """Apply what changed in the template since this project was made, keeping your edits."""
    from scaffold.update import update_project

    outcome = update_project(
        directory,
        to=to,
        settings=settings or [],
        conflict=conflict,
        dry_run=dry_run,
        force=force,
        echo=typer.echo,
    )
    if outcome is None:
        typer.echo("Up to date: nothing to update.")


@app.command("check-update", cls=Command)
def check_update(directory: ProjectDir = None) -> None:
    """Compare the project's template version with the installed one (exit 1: update available)."""
    from scaffold.update import check_update as statuses_of

    statuses = statuses_of(directory)
    for status in statuses:
        typer.echo(
            f"{status.answers.label}: template {status.current}, "
            f"installed {status.installed} ({status.state})"
        )
    if any(status.state == "update available" for status in statuses):
        typer.echo("Run `scaffold update` to update.")
        raise typer.Exit(1)


@app.command(cls=Command)
def examples(
    into: Annotated[
        Path | None,
        typer.Option(
            "--into", metavar="DIR", help="Where (default: generated_examples/ in this checkout)."
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Compare with a fresh render, write nothing (exit 1 if they differ)."
        ),
    ] = False,
) -> None:
    """Render the example projects into generated_examples/ (see scaffold/examples.py)."""
    from scaffold.examples import check_examples, write_examples

    if check:
        problems = check_examples(into)
        for problem in problems:
            typer.echo(problem)
        if problems:
            raise ScaffoldError(
                f"{len(problems)} difference(s) from a fresh render: run `scaffold examples`"
            )
        typer.echo("generated examples are up to date")
        return
    for name in write_examples(into):
        typer.echo(f"{'write':>12}  {name}")


def root_help() -> str:
    """`scaffold --help`, as text."""
    command = typer.main.get_command(app)
    with command.make_context("scaffold", [], resilient_parsing=True) as ctx:
        return ctx.get_help()


def is_command_line_error(error: BaseException) -> bool:
    """Click's errors (ClickException and its subclasses), told by their documented interface.

    Their classes live in `click.exceptions` up to Typer 0.25 and in a private copy of Click
    inside Typer from 0.26 on; neither is importable on every Typer, their interface is.
    """
    return isinstance(getattr(error, "exit_code", None), int) and callable(
        getattr(error, "format_message", None)
    )


def main(argv: list[str] | None = None) -> None:
    """Console entry point: every failure ends as one line on stderr and a documented exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        if not args:
            # Click up to 8.1 prints the help to stdout and exits 0 here, later versions raise an
            # error that carries it: the same on every version, a usage error with the help.
            typer.echo(root_help(), err=True)
            sys.exit(2)
        code = app(args=args, prog_name="scaffold", standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(code) is returned, not raised, here
            sys.exit(code)
    except ScaffoldError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("error: cancelled", err=True)
        sys.exit(1)
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        typer.echo(f"error: {error.strerror or error}{where}", err=True)
        sys.exit(1)
    except Exception as error:
        if not is_command_line_error(error):
            raise
        if hasattr(error, "ctx"):  # a usage error: Click gives it the context of the command
            command = error.ctx.command_path if error.ctx else "scaffold"
            typer.echo(f"error: {error.format_message()} (see '{command} --help')", err=True)
            sys.exit(2)
        typer.echo(f"error: {error.format_message()}", err=True)
        sys.exit(1)
