"""`scaffold add COMPONENT [NAME]`: plan every file a component touches, then write all or nothing.

hook, model and dataset each have a small copier template (templates/<component>/) that writes one
module and its answers file, .copier-answers.<component>-<NAME>.yml (what `scaffold update` reads);
then scaffold registers the module with an import and a line in each registry dict (HOOKS in
hooks/__init__.py, CUSTOM_MODELS and HEADS in model.py, DATASETS in dataset.py). launch and slurm
take their file from the project template itself, rendered with the project's recorded answers.

Each file gets one line of the plan:
    create     it does not exist yet
    update     new registry lines go into it (the user's own lines stay), or --force overwrites it
    identical  it already holds exactly this: running the same `add` twice changes nothing
    conflict   it differs from what scaffold writes (or its registry cannot be found): nothing is
               written at all, exit 1
"""

from __future__ import annotations

import ast
import functools
import keyword
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from scaffold import __version__
from scaffold.catalog import DATASETS, MODELS
from scaffold.errors import ScaffoldError, UsageError
from scaffold.project import ANSWERS_FILE, find_project_root, read_answers
from scaffold.render import copier_copy

COMPONENTS = ("hook", "model", "dataset", "launch", "slurm")
HOOK_KINDS = ("activations", "gradients", "nan_check", "custom")
BUILTIN_HOOKS = ("activations", "gradients", "nan_check")
DEFAULT_HOOK_NAMES = {kind: f"my_{kind}" for kind in BUILTIN_HOOKS} | {"custom": "my_hook"}
# Names a new component cannot take: the built-in ones (and hooks/base.py).
BUILTIN_NAMES = {"hook": {*BUILTIN_HOOKS, "base"}, "model": set(MODELS), "dataset": set(DATASETS)}
# Names a new component's class or builder must not take: what its own module imports.
TAKEN_NAMES = {
    "hook": {"Hook", "ActivationStats", "GradientNorms", "NanCheck"},
    "model": {"CausalConvBlock"},  # a language model's blocks
    "dataset": {"Dataset"},
}
# The tasks whose datasets `scaffold add dataset` writes (an image and its label or mask).
DATASET_TASKS = ("classification", "segmentation")
# What HEADS (model.py) names as the heads of the model `scaffold add model` writes, by task.
MODEL_HEADS = {
    "classification": '"head"',
    "segmentation": '"head"',
    "detection": '("rpn", "roi_heads")',
}
NEXT_STEPS = {
    "hook": "python train.py --hooks {name} --max-steps 20",
    "model": "python train.py --model {name} --max-steps 20",
    "dataset": "python train.py --dataset {name} --max-steps 20",
    "launch": "open the folder in VS Code; Run and Debug lists the configurations",
    "slurm": "sbatch scripts/slurm.sbatch (from this folder)",
}
NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
MAX_NAME_LENGTH = 30  # keeps every generated line within LINE_LENGTH
LINE_LENGTH = 100  # the generated project's black and ruff setting


@dataclass
class FileChange:
    """What happens to one file of the project; `path` is relative to the project root."""

    path: str
    action: str  # create, update, identical or conflict
    content: str = ""
    mode: int | None = None  # permission bits of a created file (scripts are executable)
    reason: str = ""  # for a conflict: why, as the end of a sentence starting with the path

    def line(self, dry_run: bool = False) -> str:
        verb = f"would {self.action}" if dry_run and self.action in ("create", "update") else ""
        return f"{verb or self.action:>12}  {self.path}"


@dataclass
class Registration:
    """`from MODULE import SYMBOL` and `"KEY": VALUE,` entries, added to a registry module."""

    path: str  # the registry file, relative to the project root
    module: str
    symbol: str
    entries: list[tuple[str, str, str]] = field(default_factory=list)  # (dict, key, value)
    keep_existing: set[str] = field(default_factory=set)  # dicts where a user's value may differ


def add_component(
    component: str,
    name: str | None = None,
    *,
    kind: str | None = None,
    directory: Path | None = None,
    dry_run: bool = False,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> list[FileChange]:
    """Plan COMPONENT, print one line per file, and write the files unless dry_run or conflicts."""
    if component not in COMPONENTS:
        raise UsageError(f"unknown component {component!r}; choose one of: {', '.join(COMPONENTS)}")
    if kind is not None and component != "hook":
        raise UsageError("--kind is for `scaffold add hook` only")
    if component in ("launch", "slurm") and name is not None:
        raise UsageError(f"`scaffold add {component}` takes no NAME")
    if component in ("model", "dataset") and name is None:
        raise UsageError(
            f"`scaffold add {component}` needs a NAME, e.g. scaffold add {component} "
            f"{'tiny_cnn' if component == 'model' else 'my_images'}"
        )
    if component == "hook":
        kind = kind or "custom"
        if kind not in HOOK_KINDS:
            raise UsageError(f"unknown hook kind {kind!r}; choose one of: {', '.join(HOOK_KINDS)}")
        name = name or DEFAULT_HOOK_NAMES[kind]
    if name is not None:
        check_name(component, name)
    root = find_project_root(directory)
    answers = read_answers(root)
    if component == "hook":
        changes = plan_hook(root, answers, name, kind, force)
    elif component in ("model", "dataset"):
        changes = plan_model_or_dataset(component, root, answers, name, force)
    elif component == "launch":
        changes = plan_launch(root, answers, force)
    else:
        changes = plan_slurm(root, answers, force)

    conflicts = [change for change in changes if change.action == "conflict"]
    for change in changes:
        echo(change.line(dry_run or bool(conflicts)))
    if conflicts:
        reasons = "; ".join(f"{change.path} {change.reason}" for change in conflicts)
        raise ScaffoldError(f"nothing was written: {reasons}")
    if not dry_run and any(change.action in ("create", "update") for change in changes):
        write_changes(root, changes)
        echo(f"\nNext: {NEXT_STEPS[component].format(name=name)}")
    return changes


# ---- the components -------------------------------------------------------------------------


def plan_hook(root: Path, answers: dict, name: str, kind: str, force: bool) -> list[FileChange]:
    if not answers.get("hooks") and not (root / "hooks").is_dir():
        raise UsageError(
            "this project was generated with --no-hooks: it has no hooks/ package to add to"
        )
    class_name = camel_case(name)
    registration = Registration(
        "hooks/__init__.py", f"hooks.{name}", class_name, [("HOOKS", name, class_name)]
    )
    data = {"name": name, "class_name": class_name, "kind": kind}
    return plan_registered("hook", root, name, data, registration, force)


def plan_model_or_dataset(
    component: str, root: Path, answers: dict, name: str, force: bool
) -> list[FileChange]:
    # A project from before --task (0.2.0) classifies.
    task = answers.get("task", "classification")
    if component == "dataset" and task not in DATASET_TASKS:
        raise UsageError(
            f"`scaffold add dataset` writes {' and '.join(DATASET_TASKS)} datasets; for "
            f'--task {task}, edit dataset.py (its README\'s "Where to change what" says where)'
        )
    class_name = camel_case(name)
    if component == "model":
        # A language model's output layer is its token embedding: it has no head to name.
        heads = [("HEADS", name, MODEL_HEADS[task])] if task in MODEL_HEADS else []
        registration = Registration(
            "model.py",
            f"model_{name}",
            class_name,
            [("CUSTOM_MODELS", name, class_name), *heads],
            keep_existing={"HEADS"},
        )
    else:
        builder = f"{name}_datasets"
        registration = Registration(
            "dataset.py", f"dataset_{name}", builder, [("DATASETS", name, builder)]
        )
    data = {"name": name, "class_name": class_name, "task": task}
    return plan_registered(component, root, name, data, registration, force)


def plan_registered(
    component: str,
    root: Path,
    name: str,
    data: dict[str, object],
    registration: Registration,
    force: bool,
) -> list[FileChange]:
    """The component's rendered files, then the update of the registry that imports it."""
    registry_path = root / registration.path
    registry_text = read_text(registry_path)
    if registry_text is not None:
        check_symbol_is_free(component, name, registry_text, registration)
    taken = TAKEN_NAMES[component] & {data["class_name"], registration.symbol}
    if taken:
        raise UsageError(
            f"{component} name {name!r} would define {taken.pop()}, a name its module imports: "
            "choose another name"
        )
    data = {**data, "template_version": __version__}
    with tempfile.TemporaryDirectory(prefix="scaffold-add-") as staging:
        copier_copy(data, Path(staging), name=component)
        rendered = read_tree(Path(staging))
    rendered.sort(key=lambda item: is_answers_file(item[0]))  # the module first, then its answers
    changes = [compare(root, path, content, mode, force) for path, (content, mode) in rendered]
    changes.append(plan_registration(root, registry_text, registration))
    return changes


def plan_launch(root: Path, answers: dict, force: bool) -> list[FileChange]:
    """.vscode/launch.json as `scaffold new` writes it for this project; vscode: true recorded."""
    rendered = render_project_files(answers, {"vscode": True}, [".vscode/launch.json"])
    changes = [compare(root, path, content, mode, force) for path, (content, mode) in rendered]
    if answers.get("vscode") is False:
        text = read_text(root / ANSWERS_FILE) or ""
        updated, count = re.subn(r"(?m)^vscode: false$", "vscode: true", text)
        if count == 1:  # so that `scaffold update` keeps launch.json up to date from now on
            changes.append(FileChange(ANSWERS_FILE, "update", updated))
    return changes


def plan_slurm(root: Path, answers: dict, force: bool) -> list[FileChange]:
    """scripts/slurm.sbatch as `scaffold new --ddp` writes it (and train_ddp.sh if missing)."""
    if not answers.get("ddp"):
        raise UsageError(
            "scripts/slurm.sbatch starts train.py with torchrun on every node, but this project "
            "was generated without --ddp: its train.py runs a single process"
        )
    wanted = ["scripts/slurm.sbatch", "scripts/train_ddp.sh"]
    rendered = render_project_files(answers, {}, wanted)
    changes = []
    for path, (content, mode) in rendered:
        if path == "scripts/slurm.sbatch" or not (root / path).exists():
            changes.append(compare(root, path, content, mode, force))
    return changes


# ---- planning helpers -----------------------------------------------------------------------


def check_name(component: str, name: str) -> None:
    """NAME becomes a module, a class and a train.py choice: a plain lowercase identifier."""
    if not NAME.match(name) or len(name) > MAX_NAME_LENGTH:
        raise UsageError(
            f"invalid {component} name {name!r}: use lowercase letters, digits and '_', "
            f"starting with a letter (at most {MAX_NAME_LENGTH} characters)"
        )
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise UsageError(f"invalid {component} name {name!r}: it is a Python keyword")
    if name in BUILTIN_NAMES[component]:
        raise UsageError(f"{component} {name!r} is already built in: choose another name")


def camel_case(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def check_symbol_is_free(component: str, name: str, text: str, registration: Registration) -> None:
    """The registry must not already bind the symbol we import into it, except by that import."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return  # plan_registration reports it as a conflict
    if find_import(tree, registration.module, registration.symbol):
        return
    if registration.symbol in bound_names(tree):
        raise UsageError(
            f"{registration.path} already defines {registration.symbol}, the name {component} "
            f"{name!r} would import there: choose another name"
        )


def compare(root: Path, path: str, content: str, mode: int, force: bool) -> FileChange:
    target = root / path
    if not target.exists():
        return FileChange(path, "create", content, mode)
    if not target.is_file():
        return FileChange(path, "conflict", reason="is in the way and is not a file")
    current = read_text(target)
    if current == content or (
        current is not None and is_answers_file(path) and same_answers(current, content)
    ):
        return FileChange(path, "identical")
    if force:
        return FileChange(path, "update", content)
    return FileChange(
        path, "conflict", reason="differs from what scaffold writes (--force overwrites it)"
    )


def is_answers_file(path: str) -> bool:
    return "/" not in path and path.startswith(".copier-answers.") and path.endswith(".yml")


def same_answers(current: str, content: str) -> bool:
    """Equal answers, apart from where the template was (_src_path moves with the install)."""
    import yaml

    try:
        old, new = yaml.safe_load(current), yaml.safe_load(content)
    except yaml.YAMLError:
        return False
    if not isinstance(old, dict) or not isinstance(new, dict):
        return False
    private = ("_src_path", "_commit")
    return {k: v for k, v in old.items() if k not in private} == {
        k: v for k, v in new.items() if k not in private
    }


def plan_registration(root: Path, text: str | None, registration: Registration) -> FileChange:
    path = registration.path
    if text is None:
        reason = f"is missing, so {registration.symbol} cannot be registered"
        return FileChange(path, "conflict", reason=reason)
    try:
        updated = register(text, registration, root)
    except RegistryError as error:
        return FileChange(path, "conflict", reason=str(error))
    if updated == text:
        return FileChange(path, "identical")
    return FileChange(path, "update", updated)


# ---- rendering ------------------------------------------------------------------------------


def render_project_files(
    answers: dict, overrides: dict[str, object], paths: list[str]
) -> list[tuple[str, tuple[str, int]]]:
    """`paths` as the project template renders them with the project's answers and `overrides`."""
    data = {key: value for key, value in answers.items() if not key.startswith("_")}
    data.update(overrides)
    with tempfile.TemporaryDirectory(prefix="scaffold-add-") as staging:
        copier_copy(data, Path(staging) / "project")
        rendered = dict(read_tree(Path(staging) / "project"))
    missing = [path for path in paths if path not in rendered]
    if missing:
        raise ScaffoldError(f"the project template did not write {', '.join(missing)}")
    return [(path, rendered[path]) for path in paths]


def read_tree(root: Path) -> list[tuple[str, tuple[str, int]]]:
    """(relative path, (text, permission bits)) of every file under `root`, sorted by path."""
    files = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            relative = path.relative_to(root).as_posix()
            files.append((relative, (path.read_text(encoding="utf-8"), path.stat().st_mode)))
    return files


def read_text(path: Path) -> str | None:
    """The file's text with its line endings as they are; None when it does not exist."""
    try:
        with open(path, encoding="utf-8", newline="") as file:
            return file.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise ScaffoldError(f"cannot read {path}: {error}") from None


# ---- writing --------------------------------------------------------------------------------


def write_changes(root: Path, changes: list[FileChange]) -> None:
    """Write every create and update; if one fails, put back what was there before."""
    written: list[tuple[Path, str | None]] = []
    created_dirs: list[Path] = []
    try:
        for change in changes:
            if change.action not in ("create", "update"):
                continue
            target = root / change.path
            for parent in reversed(target.parents):
                if not parent.exists():
                    parent.mkdir()
                    created_dirs.append(parent)
            previous = read_text(target)
            written.append((target, previous))
            write_file(target, change.content, change.mode)
    except BaseException:
        for target, previous in reversed(written):
            if previous is None:
                target.unlink(missing_ok=True)
            else:
                write_file(target, previous, None)
        for folder in reversed(created_dirs):
            shutil.rmtree(folder, ignore_errors=True)
        raise


def write_file(target: Path, content: str, mode: int | None) -> None:
    """Replace `target` atomically, keeping its permissions (or giving a new file `mode`)."""
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            file.write(content)
        if target.exists():
            shutil.copymode(target, temporary)
        else:
            os.chmod(temporary, (mode or 0o644) & 0o777)  # rendered files already had the umask
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# ---- registry edits -------------------------------------------------------------------------


class RegistryError(Exception):
    """A registry that cannot be edited safely; the message follows its path in a sentence."""


def register(text: str, registration: Registration, root: Path) -> str:
    """`text` with the import and the dict entries of `registration` added where missing.

    The import goes into the block of the project's own imports, in isort order (or as a new
    block after the last import); each entry goes just before the closing brace of its dict,
    in the dict's own layout. Everything else stays as it is.
    """
    try:
        tree = ast.parse(text)
    except SyntaxError as error:
        raise RegistryError(f"is not valid Python (line {error.lineno}): fix it first") from None
    source = Source(text)
    edits: list[tuple[int, int, str]] = []  # (start offset, end offset, replacement)
    for dict_name, key, value in registration.entries:
        node = find_dict(tree, dict_name)
        if node is None:
            raise RegistryError(
                f"has no `{dict_name} = {{...}}` to register {key!r} in: add "
                f"`{key!r}: {value},` there by hand"
            )
        existing = dict_value(node, key)
        if existing is None:
            edits.append(insert_entry(source, node, f'"{key}": {value}'))
        elif not same_expression(existing, value) and dict_name not in registration.keep_existing:
            raise RegistryError(
                f"already maps {key!r} to {ast.unparse(existing)} in {dict_name}: choose "
                "another name"
            )
    if not find_import(tree, registration.module, registration.symbol):
        line = f"from {registration.module} import {registration.symbol}"
        edits.append(insert_import(source, tree, line, registration.module, root))
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


class Source:
    """Offsets into the text from ast positions (1-based lines, UTF-8 byte columns)."""

    def __init__(self, text: str):
        self.text = text
        self.lines = text.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))
        first = self.lines[0] if self.lines else "\n"
        self.newline = "\r\n" if first.endswith("\r\n") else "\n"

    def offset(self, lineno: int, col: int) -> int:
        line = self.lines[lineno - 1] if lineno <= len(self.lines) else ""
        return self.starts[lineno - 1] + len(line.encode()[:col].decode(errors="ignore"))

    def line_start(self, lineno: int) -> int:
        return self.starts[min(lineno - 1, len(self.lines))]

    def indent(self, lineno: int) -> str:
        line = self.lines[lineno - 1]
        return line[: len(line) - len(line.lstrip(" \t"))]


def find_dict(tree: ast.Module, name: str) -> ast.Dict | None:
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return node.value if isinstance(node.value, ast.Dict) else None
    return None


def dict_value(node: ast.Dict, key: str) -> ast.expr | None:
    for k, v in zip(node.keys, node.values, strict=True):
        if isinstance(k, ast.Constant) and k.value == key:
            return v
    return None


def same_expression(node: ast.expr, source: str) -> bool:
    return ast.dump(node) == ast.dump(ast.parse(source, mode="eval").body)


def find_import(tree: ast.Module, module: str, symbol: str) -> bool:
    return any(
        isinstance(node, ast.ImportFrom)
        and node.level == 0
        and node.module == module
        and any(alias.name == symbol and alias.asname in (None, symbol) for alias in node.names)
        for node in tree.body
    )


def bound_names(tree: ast.Module) -> set[str]:
    """Names the module binds at its top level."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def insert_entry(source: Source, node: ast.Dict, entry: str) -> tuple[int, int, str]:
    """An edit adding `entry` as the last item of the dict literal `node`, in its layout."""
    text, newline = source.text, source.newline
    start = source.offset(node.lineno, node.col_offset)
    close = source.offset(node.end_lineno, node.end_col_offset) - 1  # the closing brace
    last = node.values[-1] if node.values else None
    last_end = source.offset(last.end_lineno, last.end_col_offset) if last else start + 1
    after_last = "".join(line.split("#")[0] for line in text[last_end:close].splitlines())
    has_comma = "," in after_last
    brace_line = source.line_start(node.end_lineno)
    if not text[brace_line:close].strip():
        # The closing brace alone on its line (black's layout): a new line just above it.
        if last is None:
            indent = source.indent(node.end_lineno) + "    "
        else:
            indent = source.indent((node.keys[-1] or last).lineno)
        new_line = f"{indent}{entry},{newline}"
        if last is None or has_comma:
            return brace_line, brace_line, new_line
        return last_end, brace_line, "," + text[last_end:brace_line] + new_line
    if node.lineno == node.end_lineno:
        return extend_one_line_dict(source, node, entry, start, close)
    # Some other layout: the entry goes right before the brace.
    return close, close, (f" {entry}," if has_comma else f", {entry}")


def extend_one_line_dict(
    source: Source, node: ast.Dict, entry: str, start: int, close: int
) -> tuple[int, int, str]:
    """The dict on one line with `entry` added while that fits, else one item a line (black)."""
    text, newline = source.text, source.newline
    segment = functools.partial(ast.get_source_segment, text)
    items = [
        f"**{segment(v)}" if k is None else f"{segment(k)}: {segment(v)}"
        for k, v in zip(node.keys, node.values, strict=True)
    ] + [entry]
    line_start = source.line_start(node.lineno)
    line_end = line_start + len(source.lines[node.lineno - 1].rstrip("\r\n"))
    one_line = "{" + ", ".join(items) + "}"
    if (start - line_start) + len(one_line) + (line_end - close - 1) <= LINE_LENGTH:
        return start, close + 1, one_line
    indent = source.indent(node.lineno)
    body = "".join(f"{indent}    {item},{newline}" for item in items)
    return start, close + 1, f"{{{newline}{body}{indent}}}"


def insert_import(
    source: Source, tree: ast.Module, line: str, module: str, root: Path
) -> tuple[int, int, str]:
    """An edit adding the import `line`, sorted into the project's own imports (ruff's isort)."""
    newline = source.newline
    body = tree.body
    first = 1 if body and is_docstring(body[0]) else 0
    imports = []
    for node in body[first:]:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            break
        imports.append(node)
    if not imports:  # the first import: after the docstring, a blank line either side
        after = body[0].end_lineno if first else 0
        at = source.line_start(after + 1)
        blank_after = "" if source.text[at:].startswith(("\n", "\r\n")) else newline
        return at, at, (newline if after else "") + line + newline + blank_after
    local = [i for i, node in enumerate(imports) if is_local_import(node, root)]
    if not local:
        at = source.line_start(imports[-1].end_lineno + 1)
        return at, at, newline + line + newline
    # The block (consecutive lines) holding the last of the project's own imports.
    end = local[-1]
    begin = end
    while begin > 0 and imports[begin - 1].end_lineno == imports[begin].lineno - 1:
        begin -= 1
    while end + 1 < len(imports) and imports[end + 1].lineno == imports[end].end_lineno + 1:
        end += 1
    key = sort_key(module)
    for node in imports[begin : end + 1]:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and sort_key(node.module) > key:
            at = source.line_start(node.lineno)
            return at, at, line + newline
    at = source.line_start(imports[end].end_lineno + 1)
    return at, at, line + newline


def is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def is_local_import(node: ast.Import | ast.ImportFrom, root: Path) -> bool:
    """An import of one of the project's own modules (what ruff's isort calls first-party)."""
    if isinstance(node, ast.ImportFrom):
        if node.level:
            return True
        top = (node.module or "").split(".")[0]
    else:
        top = node.names[0].name.split(".")[0]
    return bool(top) and ((root / f"{top}.py").is_file() or (root / top).is_dir())


def sort_key(module: str | None) -> tuple:
    """isort's (and ruff's) order of module names: case-insensitive, runs of digits by value."""
    key: list[tuple[int, int]] = []
    for part in re.split(r"(\d+)", (module or "").lower()):
        if part.isdigit():
            key.append((ord("0"), int(part)))
        else:
            key.extend((ord(char), 0) for char in part)
    return tuple(key)
