"""`scaffold update` and `scaffold check-update`: bring a project to the installed template version.

How it fits together:
- Copier updates a project with a three-way merge: it renders the template at the version the
  project records (`_commit`) and at the new one, and applies the difference to the project,
  which keeps the user's own edits. It can only check out the old version from a git repository
  root or a git bundle, so scaffold ships each template's history as a bundle (built by
  scaffold.release; see render.template_source for how `scaffold new` records `_commit`).
- Answers files say `_src_path: ~/.cache/scaffold/<name>.bundle`: the same on every machine, in
  every venv and from every current directory (copier expands `~`; a relative path would be
  resolved against the current directory, an absolute one would name one venv's site-packages).
  Copier's run_update has no src_path argument: it always takes the template from the answers
  file. So scaffold keeps that file current (render.cached_bundle: a copy of the installed
  bundle, merged with what is there so tags only add up), and this is also what makes plain
  `copier update` work inside a project without scaffold.
- Every answers file is updated: .copier-answers.yml first, then each
  .copier-answers.<component>-<NAME>.yml that `scaffold add` wrote, each from its own template's
  bundle. Copier refuses a dirty tree, so between two of them the changes are kept in a
  temporary commit; HEAD is moved back at the end and the user reviews one uncommitted diff.
- `--set KEY=VALUE` re-renders the project with a new answer (even at the same version): how a
  project gains DDP or the VS Code config after the fact.
- Copier exits 0 even when conflicts remain; they are found here (unmerged index entries,
  *.rej files) and turned into exit code 1. Inline conflicts are first merged again with git's
  own merge and named (scaffold.conflicts): each block says which of the user's edits it holds
  and where that code is now, from the "What moved where" tables of the template's CHANGELOG.md,
  and the update prints the same for every edit of each conflicted file.
- `--dry-run` runs the very same update in a throwaway clone (`git clone --shared`) and reports.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scaffold.errors import ScaffoldError, UsageError
from scaffold.project import ANSWERS_FILE, find_project_root

COMPONENT_ANSWERS = ".copier-answers.*.yml"
SRC_PATH = re.compile(r"~/\.cache/scaffold/(?P<name>[A-Za-z0-9_.-]+)\.bundle")
DESCRIBE = re.compile(r"(?P<tag>.+)-(?P<count>\d+)-g(?P<hash>[0-9a-f]+)")
CONFLICT_CODES = {"DD", "AU", "UD", "UA", "DU", "AA", "UU"}
CONFLICT_MODES = ("inline", "rej")
DRY_RUN_VERBS = {
    "updated": "would update",
    "created": "would create",
    "deleted": "would delete",
    "conflict": "would conflict",
}


@dataclass(frozen=True)
class Answers:
    """One answers file of a project: which template, at which version, with which answers."""

    path: str  # relative to the project root
    values: dict

    @property
    def label(self) -> str:
        """'project', or the component's name ('hook-grad_norm') from its file name."""
        if self.path == ANSWERS_FILE:
            return "project"
        return self.path.removeprefix(".copier-answers.").removesuffix(".yml")

    @property
    def src_path(self) -> str | None:
        return self.values.get("_src_path")

    @property
    def template(self) -> str | None:
        """The scaffold template it was made from, or None when it was not made by scaffold."""
        match = SRC_PATH.fullmatch(str(self.src_path or ""))
        return match.group("name") if match else None

    @property
    def commit(self) -> str | None:
        commit = self.values.get("_commit")
        return str(commit) if commit is not None else None

    @property
    def version(self) -> str | None:
        """The template version as copier reads `_commit`: 'v1.2.0' -> '1.2.0'."""
        if self.commit is None:
            return None
        match = DESCRIBE.fullmatch(self.commit)
        if match:  # rendered from a commit after a tag, as `git describe` says
            tag, count, commit_hash = match.group("tag", "count", "hash")
            return f"{tag.removeprefix('v')}.post{count}+g{commit_hash}"
        return self.commit.removeprefix("v")


@dataclass
class Plan:
    answers: Answers
    source: object  # render.TemplateSource
    target: str
    data: dict = field(default_factory=dict)

    @property
    def settings(self) -> dict:
        """The answers --set changes."""
        return {key: value for key, value in self.data.items() if key != "template_version"}

    def settings_text(self) -> str:
        """'ddp=true, model=lenet', as --set spells them."""
        return ", ".join(
            f"{key}={str(value).lower() if isinstance(value, bool) else value}"
            for key, value in self.settings.items()
        )


@dataclass
class Outcome:
    """What an update did (or would do), as one line per file."""

    changes: list[tuple[str, str]]  # (verb, path relative to the project root), sorted by path
    conflicts: list[str]
    skipped: list[str]  # labels not updated because an earlier one left conflicts
    notes: list[str] = field(default_factory=list)  # where the edits in conflicted files belong


# ---- reading a project ----------------------------------------------------------------------


def read_answers_files(root: Path) -> list[Answers]:
    """Every answers file of the project: the project's own first, then the components'."""
    import yaml  # a dependency of copier; imported here so that `scaffold --help` stays instant

    paths = [root / ANSWERS_FILE, *sorted(root.glob(COMPONENT_ANSWERS))]
    found = []
    for path in paths:
        if not path.is_file():
            continue
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            reason = str(error).strip().splitlines()
            raise ScaffoldError(f"cannot read {path}: {reason[0] if reason else error}") from None
        if not isinstance(values, dict):
            raise ScaffoldError(f"{path} is not a copier answers file")
        found.append(Answers(path.name, values))
    return found


def parse_version(text: str):
    from packaging.version import InvalidVersion, Version

    try:
        return Version(text)
    except InvalidVersion:
        raise UsageError(f"{text!r} is not a version (for example 0.3.0)") from None


def installed_source(answers: Answers):
    """The template source of this installation for `answers`, which must have a history."""
    from scaffold.render import template_source

    if answers.template is None:
        raise ScaffoldError(
            f"{answers.path} says the template is {answers.src_path!r}, not scaffold's template "
            f"history: update it with `copier update --answers-file {answers.path}`"
        )
    if answers.version is None:
        raise ScaffoldError(
            f"{answers.path} records no template version (_commit): it was made without the "
            "template history and cannot be updated; make a new project and copy your changes"
        )
    source = template_source(answers.template)
    if source.version is None:
        raise ScaffoldError(
            "this scaffold installation carries no template history (scaffold/bundles): "
            "reinstall scaffold from a release wheel"
        )
    return source


@dataclass(frozen=True)
class Status:
    answers: Answers
    current: str
    installed: str

    @property
    def state(self) -> str:
        current, installed = parse_version(self.current), parse_version(self.installed)
        if current < installed:
            return "update available"
        return "up to date" if current == installed else "newer than installed"


def check_update(directory: Path | None = None) -> list[Status]:
    """The template version of each answers file of the project, next to the installed one."""
    from scaffold.render import refresh_caches

    root = find_project_root(directory)
    statuses = []
    for answers in read_answers_files(root):
        source = installed_source(answers)
        statuses.append(Status(answers, answers.version, source.version))
    refresh_caches()  # keeps plain `copier update` working
    return statuses


# ---- --set --------------------------------------------------------------------------------


def parse_settings(settings: Sequence[str], answers: Answers, source) -> dict[str, object]:
    """KEY=VALUE pairs as typed answers of the project template, validated like `scaffold new`."""
    import yaml

    questions = project_questions(source)
    values: dict[str, object] = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set takes KEY=VALUE, got {setting!r}")
        if key not in questions:
            raise UsageError(f"--set {key}: no such answer; one of: {', '.join(sorted(questions))}")
        kind = questions[key]
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        if kind == "bool":
            if not isinstance(value, bool):
                raise UsageError(f"--set {key}: expected true or false, got {text!r}")
        elif kind in ("int", "float"):
            wanted = int if kind == "int" else (int, float)
            if isinstance(value, bool) or not isinstance(value, wanted):
                raise UsageError(f"--set {key}: expected a number, got {text!r}")
        else:
            value = text
        values[key] = value
    if values:
        validate_project_answers({**answers.values, **values})
    return values


def project_questions(source) -> dict[str, str]:
    """{question: type} of the project template, hidden ones (when: false) left out."""
    import yaml

    config = yaml.safe_load((source.folder / "copier.yml").read_text(encoding="utf-8"))
    return {
        key: str(spec.get("type", "str")) if isinstance(spec, dict) else "str"
        for key, spec in config.items()
        if not key.startswith("_") and not (isinstance(spec, dict) and spec.get("when") is False)
    }


def validate_project_answers(values: dict) -> None:
    from scaffold.options import NewProject, answer_names

    known = set(answer_names())
    NewProject(
        dest=Path(str(values.get("project_name", "project"))),
        **{key: value for key, value in values.items() if key in known},
    ).validate()


# ---- what --set would delete ----------------------------------------------------------------
#
# Copier's update deletes every file the old answers render and the new ones do not, whatever the
# user did to it, and a folder only when nothing else is left in it. So before copier runs, the
# project template is rendered at the project's own version with the old answers and with the new
# ones: the files only the first holds are the ones the update deletes, and comparing them with
# the first render tells which the user changed.


def check_dropped_files(root: Path, plan: Plan, all_answers: list[Answers], force: bool) -> None:
    """Refuse a --set that deletes what the user changed, or what the hooks they added import."""
    if plan.answers.path != ANSWERS_FILE or not plan.settings:
        return
    from scaffold.render import list_files, listing, render_template

    old_data = {key: value for key, value in plan.answers.values.items() if key[:1] != "_"}
    with tempfile.TemporaryDirectory(prefix="scaffold-set-") as tmp:
        before, after = Path(tmp) / "before", Path(tmp) / "after"
        for into, data in ((before, old_data), (after, {**old_data, **plan.settings})):
            render_template(str(plan.source.bundle), into, data, plan.answers.commit)
        dropped = sorted(set(list_files(before)) - set(list_files(after)))
        changed = [
            name
            for name in dropped
            if (root / name).is_file()
            and (root / name).read_bytes() != (before / name).read_bytes()
        ]
    hooks = [
        str(answers.values.get("name") or answers.label.removeprefix("hook-"))
        for answers in all_answers
        if answers.template == "hook"
    ]
    if hooks and any(name.startswith("hooks/") for name in dropped):
        raise ScaffoldError(
            f"--set {plan.settings_text()} would delete hooks/, which the hooks you added with "
            f"`scaffold add hook` import ({listing(hooks)}): remove them first (hooks/NAME.py, "
            "their HOOKS entry and .copier-answers.hook-NAME.yml), or keep hooks on"
        )
    if changed and not force:
        them = "it" if len(changed) == 1 else "them"
        raise ScaffoldError(
            f"--set {plan.settings_text()} would delete {listing(changed)}, which you changed "
            f"since scaffold wrote {them}: pass --force to delete {them} anyway"
        )


# ---- updating -----------------------------------------------------------------------------


def update_project(
    directory: Path | None = None,
    *,
    to: str | None = None,
    settings: Sequence[str] = (),
    conflict: str = "inline",
    dry_run: bool = False,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> Outcome | None:
    """Update every template of the project to `to` (default: the installed version).

    Prints what it does; raises ScaffoldError (exit 1) when conflicts remain, or before anything
    changes when a --set answer would delete a file the user changed (unless `force`) or the
    hooks/ package that hooks added with `scaffold add hook` import. Returns None when there was
    nothing to do.
    """
    from scaffold.render import cached_bundle

    if conflict not in CONFLICT_MODES:
        raise UsageError(f"--conflict must be inline or rej, got {conflict!r}")
    root = find_project_root(directory).resolve()
    top = git_toplevel(root)
    check_clean(root)
    all_answers = read_answers_files(root)
    plans = plan_update(all_answers, to, settings)
    if not plans:
        return None
    for plan in plans:
        check_dropped_files(root, plan, all_answers, force)
    for plan in plans:
        cached_bundle(plan.answers.template, plan.source.bundle)
        settings_text = plan.settings_text()
        if plan.answers.version == plan.target:
            echo(f"{plan.answers.label}: template {plan.target}, re-rendered with {settings_text}")
        else:
            with_settings = f" with {settings_text}" if settings_text else ""
            echo(
                f"{plan.answers.label}: template {plan.answers.version} -> {plan.target}"
                f"{with_settings}"
            )
    if dry_run:
        with tempfile.TemporaryDirectory(prefix="scaffold-update-") as tmp:
            clone = Path(tmp) / "project"
            git(["clone", "--quiet", "--shared", "--no-hardlinks", str(top), str(clone)], top)
            outcome = apply_plans(clone / root.relative_to(top), clone, plans, conflict)
    else:
        outcome = apply_plans(root, top, plans, conflict)
    for verb, path in outcome.changes:
        echo(f"{DRY_RUN_VERBS[verb] if dry_run else verb:>14}  {path}")
    if outcome.skipped:
        echo(f"not updated yet: {', '.join(outcome.skipped)} (after the conflicts are resolved)")
    for line in outcome.notes:
        echo(line)
    if outcome.conflicts:
        files = ", ".join(outcome.conflicts)
        if dry_run:
            raise ScaffoldError(f"the update would leave conflicts in {files}")
        how = (
            "merge the hunks of each .rej file by hand and delete it"
            if conflict == "rej"
            else "resolve the <<<<<<< markers"
        )
        more = ", then run scaffold update again for the rest" if outcome.skipped else ""
        raise ScaffoldError(f"conflicts in {files}: {how}, then commit{more}")
    if not dry_run:
        echo("Review the changes (git diff), run the tests, then commit.")
    return outcome


def plan_update(all_answers: list[Answers], to: str | None, settings: Sequence[str]) -> list[Plan]:
    plans = []
    for answers in all_answers:
        source = installed_source(answers)
        target = to.removeprefix("v") if to else source.version
        if target not in source.versions:
            raise UsageError(
                f"template version {target} is not in this scaffold's history; "
                f"available: {', '.join(source.versions)}"
            )
        current, wanted = parse_version(answers.version), parse_version(target)
        if current > wanted:
            raise ScaffoldError(
                f"{answers.label} is at template {answers.version}, newer than {target}: "
                "downgrades are not supported (pip install -U scaffold)"
            )
        if answers.version not in source.versions:
            raise ScaffoldError(
                f"{answers.path} records template {answers.commit}, which this scaffold's "
                "history does not hold: it was made by a development build"
            )
        data: dict[str, object] = {"template_version": target}
        if answers.path == ANSWERS_FILE:
            data.update(parse_settings(settings, answers, source))
        if current < wanted or len(data) > 1:
            plans.append(Plan(answers, source, target, data))
    return plans


def apply_plans(root: Path, top: Path, plans: list[Plan], conflict: str) -> Outcome:
    """Run copier's update for each plan in the project at `root`; report the changed files."""
    head = git(["rev-parse", "HEAD"], top)
    temporary = False
    conflicts: list[str] = []
    skipped: list[str] = []
    notes: list[str] = []
    try:
        for index, plan in enumerate(plans):
            if index:
                if conflicts:
                    skipped = [later.answers.label for later in plans[index:]]
                    break
                # copier wants a clean tree: keep the changes so far in a temporary commit
                git(["add", "--all", "--", "."], root)
                commit(top, "scaffold update: temporary commit")
                temporary = True
            run_copier_update(root, plan, conflict)
            if conflict == "inline":
                notes += name_conflicts(root, top, plan, find_conflicts(root, top))
            conflicts = find_conflicts(root, top)
    finally:
        if temporary:
            # HEAD back where it was; what the temporary commit held becomes unstaged changes,
            # except files with conflicts, whose index entries record the conflict
            kept = git(["diff", "--name-only", "-z", head, "HEAD"], top).split("\0")
            git(["update-ref", "-m", "scaffold update: undo temporary commit", "HEAD", head], top)
            unmerged = conflicts_in_top(root, top)
            unstage = [path for path in kept if path and path not in unmerged]
            if unstage:
                git(["reset", "--quiet", head, "--", *unstage], top)
    return Outcome(changed_files(root, top), conflicts, skipped, notes)


def name_conflicts(root: Path, top: Path, plan: Plan, paths: list[str]) -> list[str]:
    """Merge each conflicted file again and name its conflicts (scaffold.conflicts); return the
    lines to print about the edits in the files still in conflict."""
    from scaffold import conflicts

    folder = getattr(plan.source, "folder", None)
    changelog = Path(folder, "template", "CHANGELOG.md") if folder else None
    try:
        moves = conflicts.read_moves(changelog.read_text(encoding="utf-8")) if changelog else []
    except (OSError, UnicodeDecodeError):
        moves = []
    lines = []
    for path in paths:
        try:
            report = conflicts.improve_file(
                root, top, path, moves, plan.answers.version, plan.target
            )
            if report and report.edits:
                lines += conflicts.report_lines(report, root, plan.target)
        except ScaffoldError:
            raise
        except Exception:  # naming the conflicts only helps: the file keeps its markers anyway
            continue
    return lines


def run_copier_update(root: Path, plan: Plan, conflict: str) -> None:
    from copier import run_update  # imported here so that `scaffold --help` stays instant

    try:
        run_update(
            root,
            data=plan.data,
            answers_file=plan.answers.path,
            vcs_ref=f"v{plan.target}",
            defaults=True,
            overwrite=True,
            quiet=True,
            unsafe=False,
            conflict=conflict,
        )
    except (KeyboardInterrupt, EOFError):
        raise ScaffoldError("cancelled: the update stopped half-way, see git status") from None
    except Exception as error:  # copier reports problems as many different types
        message = str(error).strip().splitlines()
        raise ScaffoldError(
            f"updating {plan.answers.label} failed: {message[0] if message else type(error)}"
        ) from None


# ---- git ------------------------------------------------------------------------------------


def git(args: list[str], cwd: Path, check: bool = True) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and result.returncode:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise ScaffoldError(f"git {args[0]} failed: {lines[-1] if lines else 'no output'}")
    return result.stdout.strip("\n")


def commit(top: Path, message: str) -> None:
    identity = []
    if not git(["config", "user.email"], top, check=False).strip():
        identity = ["-c", "user.name=scaffold", "-c", "user.email=scaffold@localhost"]
    git(
        [
            *identity,
            "-c",
            "commit.gpgSign=false",
            "-c",
            "core.hooksPath=/dev/null",
            "commit",
            "--quiet",
            "--no-verify",
            "-m",
            message,
        ],
        top,
    )


def git_toplevel(root: Path) -> Path:
    result = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True
    )
    if result.returncode:
        raise ScaffoldError(
            f"{root} is not in a git repository, and updates are merged with git: "
            "run `git init && git add -A && git commit -m 'Before update'` there first"
        )
    if not git(["rev-parse", "--verify", "-q", "HEAD"], root, check=False):
        raise ScaffoldError(f"{root} has no commit yet: commit the project first, then update")
    return Path(result.stdout.strip()).resolve()


def check_clean(root: Path) -> None:
    status = git(["status", "--porcelain", "--", "."], root)
    if status:
        count = len(status.splitlines())
        raise ScaffoldError(
            f"{root} has uncommitted changes ({count} file{'s' if count > 1 else ''}): "
            "commit or stash them (git stash -u), then run scaffold update"
        )


def relative(root: Path, top: Path, path: str) -> str | None:
    """A path from `git` (relative to the repository top) relative to the project root."""
    prefix = root.resolve().relative_to(top.resolve()).as_posix()
    if prefix == ".":
        return path
    return path[len(prefix) + 1 :] if path.startswith(prefix + "/") else None


def conflicts_in_top(root: Path, top: Path) -> set[str]:
    unmerged = git(["diff", "--name-only", "-z", "--diff-filter=U", "--", "."], root)
    return set(filter(None, unmerged.split("\0")))


def rejects(root: Path) -> list[str]:
    """*.rej files under the project, ignored or not, relative to the project root."""
    listing = git(["ls-files", "-z", "--others", "--", ":(glob)**/*.rej"], root)
    return sorted(filter(None, listing.split("\0")))


def find_conflicts(root: Path, top: Path) -> list[str]:
    unmerged = {relative(root, top, path) for path in conflicts_in_top(root, top)}
    rejected = {path.removesuffix(".rej") for path in rejects(root)}
    return sorted(path for path in unmerged | rejected if path)


def changed_files(root: Path, top: Path) -> list[tuple[str, str]]:
    """(verb, path) for every file the update touched: updated, created, deleted, conflict."""
    status = git(["status", "--porcelain=v1", "-z", "--untracked-files=all", "--", "."], root)
    records = iter(status.split("\0"))
    changes: dict[str, str] = {}
    for record in records:
        if not record:
            continue
        code, path = record[:2], record[3:]
        if code[0] in "RC":
            next(records, None)  # the old name of a rename or copy
        path = relative(root, top, path)
        if path is None:
            continue
        if code in CONFLICT_CODES:
            changes[path] = "conflict"
        elif code == "??":
            changes[path] = "created"
        elif "D" in code:
            changes[path] = "deleted"
        else:
            changes[path] = "updated"
    for reject in rejects(root):
        changes.pop(reject, None)
        changes[reject.removesuffix(".rej")] = "conflict"
    return sorted(((verb, path) for path, verb in changes.items()), key=lambda item: item[1])
