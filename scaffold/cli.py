"""The `scaffold` command line: parse, call the library, turn errors into one line and an exit code.

Exit codes: 0 ok, 1 runtime failure or conflict, 2 usage error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from scaffold import __version__
from scaffold.catalog import DATASETS, DEFAULT_DATASET, DEFAULT_MODEL, MODELS
from scaffold.errors import ScaffoldError

app = typer.Typer(
    help="Write PyTorch training projects that train the moment they are generated.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
list_app = typer.Typer(help="List what can be chosen.", no_args_is_help=True)
app.add_typer(list_app, name="list")


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"scaffold {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=show_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Write PyTorch training projects that train the moment they are generated."""


@app.command()
def new(
    ctx: typer.Context,
    dest: Path = typer.Argument(
        ..., help="Where to create the project; its last part is the name."
    ),
    model: str = typer.Option(DEFAULT_MODEL, help="Default model for train.py."),
    num_classes: int = typer.Option(10, help="Number of classes."),
    in_channels: int = typer.Option(3, help="Image channels."),
    image_size: int = typer.Option(32, help="Image height and width in pixels."),
    dataset: str = typer.Option(DEFAULT_DATASET, help="Default dataset for train.py."),
    ddp: bool = typer.Option(False, "--ddp/--no-ddp", help="Multi-process training (torchrun)."),
    vscode: bool = typer.Option(True, "--vscode/--no-vscode", help="Write .vscode/launch.json."),
    hooks: bool = typer.Option(True, "--hooks/--no-hooks", help="Ship the hooks/ package."),
    git: bool = typer.Option(True, "--git/--no-git", help="git init and commit the project."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the files, write nothing."),
    force: bool = typer.Option(False, "--force", help="Allow a non-empty DEST."),
    interactive: bool = typer.Option(False, "--interactive", help="Ask the questions on a TTY."),
) -> None:
    """Create a new training project at DEST."""
    from scaffold.options import NewProject
    from scaffold.render import create_project

    # Interactively, copier asks every question the command line did not answer.
    answered = {
        name
        for name in ("model", "num_classes", "in_channels", "image_size", "dataset", "ddp")
        + ("vscode", "hooks")
        if not interactive or ctx.get_parameter_source(name).name == "COMMANDLINE"
    }
    project = NewProject(
        dest=dest,
        answered=frozenset(answered),
        model=model,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        dataset=dataset,
        ddp=ddp,
        vscode=vscode,
        hooks=hooks,
    )
    files = create_project(project, force=force, git=git, dry_run=dry_run, interactive=interactive)
    verb = "would create" if dry_run else "create"
    for name in files:
        typer.echo(f"{verb:>12}  {name}")
    if not dry_run:
        typer.echo(f"\nCreated {dest}. Next: cd {dest} && python train.py --epochs 1 --max-steps 3")


@list_app.command("models")
def list_models() -> None:
    """The models `--model` accepts."""
    for spec in MODELS.values():
        typer.echo(
            f"{spec.name:<20} {spec.source:<12} min image {spec.min_image_size:<4} "
            f"{spec.description}"
        )


@list_app.command("datasets")
def list_datasets() -> None:
    """The datasets `--dataset` accepts."""
    for name, description in DATASETS.items():
        typer.echo(f"{name:<10} {description}")


@list_app.command("variants")
def list_variants() -> None:
    """The option combinations CI renders and tests (scaffold/variants.py)."""
    from scaffold.variants import describe

    for line in describe():
        typer.echo(line)


@app.command()
def add(
    component: str = typer.Argument(
        ..., metavar="COMPONENT", help="hook, model, dataset, launch or slurm."
    ),
    name: str | None = typer.Argument(
        None, metavar="NAME", help="Its name (hook: default from --kind; none for launch, slurm)."
    ),
    kind: str | None = typer.Option(
        None, help="hook only: activations, gradients, nan_check or custom (the default)."
    ),
    directory: Path | None = typer.Option(
        None,
        "-C",
        "--directory",
        metavar="DIR",
        help="Use the project at or above DIR, not the current one.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan, write nothing."),
    force: bool = typer.Option(False, "--force", help="Overwrite files you have changed."),
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


@app.command()
def doctor() -> None:
    """Check that generated projects can run here: Python, torch, CUDA, backends, git."""
    from scaffold.doctor import check  # torch is imported in a child process, never here

    report = check()
    for line in report.lines:
        typer.echo(line)
    if report.problems:
        raise ScaffoldError(report.summary())
    typer.echo("ok: generated projects can run here")


@app.command()
def update(
    directory: Path | None = typer.Option(
        None, "-C", "--directory", help="Use the project at or above DIR, not the current one."
    ),
    to: str | None = typer.Option(
        None, "--to", metavar="VERSION", help="Template version (default: the installed one)."
    ),
    settings: list[str] = typer.Option(
        [], "--set", metavar="KEY=VALUE", help="Change an answer, e.g. ddp=true (repeatable)."
    ),
    conflict: str = typer.Option(
        "inline", "--conflict", metavar="inline|rej", help="Conflict markers, or .rej files."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would change, change nothing."),
) -> None:
    """Apply what changed in the template since this project was made, keeping your edits."""
    from scaffold.update import update_project

    outcome = update_project(
        directory, to=to, settings=settings, conflict=conflict, dry_run=dry_run, echo=typer.echo
    )
    if outcome is None:
        typer.echo("Up to date: nothing to update.")


@app.command("check-update")
def check_update(
    directory: Path | None = typer.Option(
        None, "-C", "--directory", help="Use the project at or above DIR, not the current one."
    ),
) -> None:
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


@app.command()
def examples(
    into: Path | None = typer.Option(
        None, "--into", metavar="DIR", help="Where (default: generated_examples/ in this checkout)."
    ),
    check: bool = typer.Option(
        False, "--check", help="Compare with a fresh render, write nothing (exit 1 if they differ)."
    ),
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


def main(argv: list[str] | None = None) -> None:
    """Console entry point: every failure ends as one line on stderr and a documented exit code."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    try:
        code = app(args=argv, prog_name="scaffold", standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(code) is returned, not raised, here
            sys.exit(code)
    except ScaffoldError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except NoArgsIsHelpError as error:
        typer.echo(error.format_message(), err=True)
        sys.exit(2)
    except UsageError as error:
        command = error.ctx.command_path if error.ctx else "scaffold"
        typer.echo(f"error: {error.format_message()} (see '{command} --help')", err=True)
        sys.exit(2)
    except ClickException as error:
        typer.echo(f"error: {error.format_message()}", err=True)
        sys.exit(1)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("error: cancelled", err=True)
        sys.exit(1)
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        typer.echo(f"error: {error.strerror or error}{where}", err=True)
        sys.exit(1)
