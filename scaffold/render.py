"""Render the project template with copier into a staging folder, then move it into place.

Nothing is written at DEST until the whole project has rendered (and been committed, with --git),
so a failure at any point leaves no directory behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from scaffold import __version__
from scaffold.errors import ScaffoldError, UsageError
from scaffold.options import NewProject

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent  # the checkout, when scaffold runs from one (editable install)
# Where answers files say the template is. The same string on every machine, venv and current
# directory (copier expands `~`); scaffold keeps the file there current (see cached_bundle).
CACHE_URL = "~/.cache/scaffold"
BUNDLE_DIR_ENV = "SCAFFOLD_BUNDLE_DIR"  # another bundles folder (tests, air-gapped mirrors)
BYTECODE = ("__pycache__", "*.py[co]")


def template_dir(name: str = "project") -> Path:
    """The copier template `name`: in the installed wheel, or at the top of a source checkout."""
    for root in (PACKAGE_DIR / "templates", SOURCE_ROOT / "templates"):
        if (root / name / "copier.yml").is_file():
            return root / name
    raise ScaffoldError(f"template {name!r} is missing from this installation: reinstall scaffold")


# ---- where a template is rendered from ------------------------------------------------------
#
# The wheel carries each template twice: the folder (templates/NAME) and its history as a git
# bundle (bundles/NAME.bundle, built by scaffold.release, one tag per released version; see that
# module for why). A project must record the version it was made from (`_commit`), which copier
# only writes when it renders from git. Rendering from the bundle costs a clone (about twice the
# time of a folder render), so `scaffold new` renders from the folder whenever the folder is
# byte for byte the bundled version (the manifest holds its digest) and writes `_commit` and
# `_src_path` into the answers file exactly as copier would have. A test checks that both ways
# give identical files.
#
# In a source checkout, the bundles are rebuilt on the fly (python -m scaffold.release, well
# under a second) whenever the templates changed, so a checkout behaves like an installed wheel;
# without git there, the folder is rendered and the project records no `_commit` (it cannot be
# updated). In a wheel whose folder does not match its bundle (a broken build), the bundle wins.


@dataclass(frozen=True)
class TemplateSource:
    name: str
    folder: Path | None  # the template folder scaffold ships (None: only in the bundle)
    bundle: Path | None  # its history; None when this installation carries none
    version: str | None  # the template version scaffold installs, "0.3.0"; None without history
    versions: tuple[str, ...] = ()  # every version in the bundle, oldest first
    folder_is_release: bool = False  # folder == the bundle at `version`: render the folder

    @property
    def tag(self) -> str:
        return f"v{self.version}"

    @property
    def url(self) -> str:
        """`_src_path` as answers files record it."""
        return f"{CACHE_URL}/{self.name}.bundle"


def bundle_dir() -> Path:
    return Path(os.environ.get(BUNDLE_DIR_ENV) or PACKAGE_DIR / "bundles")


def in_source_checkout() -> bool:
    return (
        not os.environ.get(BUNDLE_DIR_ENV)
        and (SOURCE_ROOT / ".git").exists()
        and (SOURCE_ROOT / "templates").is_dir()
        and not (PACKAGE_DIR / "templates").is_dir()
    )


def template_source(name: str = "project") -> TemplateSource:
    """Where to render template `name` from, and which version that is."""
    from scaffold import release

    try:
        folder = template_dir(name)
    except ScaffoldError:
        folder = None
    bundles = bundle_dir()
    manifest = release.read_manifest(bundles)
    if in_source_checkout() and release.stale_templates(SOURCE_ROOT, bundles):
        try:
            manifest = release.build_bundles(SOURCE_ROOT, bundles, warn=lambda message: None)
        except (release.ReleaseError, OSError) as error:
            print(
                f"warning: cannot build the template history ({error}); projects made now "
                "record no template version and cannot be updated",
                file=sys.stderr,
            )
            manifest = None
    entry = (manifest or {}).get("templates", {}).get(name)
    bundle = bundles / f"{name}.bundle"
    if entry is None or not bundle.is_file():
        if folder is None:
            raise ScaffoldError(f"template {name!r} is missing from this installation")
        return TemplateSource(name, folder, None, None)
    return TemplateSource(
        name,
        folder,
        bundle,
        manifest["version"],
        tuple(entry["versions"]),
        folder_is_release=folder is not None and release.folder_digest(folder) == entry["digest"],
    )


def stamp_answers(path: Path, source: TemplateSource) -> None:
    """Record in a freshly rendered answers file the template's version and its stable URL."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    has_commit = any(line.startswith("_commit:") for line in lines)
    stamped = []
    for line in lines:
        if line.startswith("_src_path:"):
            if source.version and not has_commit:
                stamped.append(f"_commit: {source.tag}\n")
            stamped.append(f"_src_path: {source.url}\n")
        elif line.startswith("_commit:") and not source.version:
            continue
        else:
            stamped.append(line)
    path.write_text("".join(stamped), encoding="utf-8")


def cached_bundle(name: str, bundle: Path) -> Path:
    """~/.cache/scaffold/NAME.bundle, made to hold at least every version `bundle` holds.

    Usually a copy of the package's bundle. When it holds versions this installation lacks
    (a newer scaffold in another venv wrote it), the two are merged, so that every project on
    this machine keeps finding its version; equal tags are equal commits (scaffold.release builds
    them deterministically), and on a mismatch the installed package wins.
    """
    cache = Path(os.path.expanduser(f"{CACHE_URL}/{name}.bundle"))
    package = bundle.read_bytes()
    try:
        current = cache.read_bytes()
    except FileNotFoundError:
        current = None
    if current == package:
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        if current is not None and bundle_tags(bundle).items() <= bundle_tags(cache).items():
            return cache
        if current is None or not merge_bundles([cache, bundle], partial):
            partial.write_bytes(package)
        os.replace(partial, cache)
    finally:
        partial.unlink(missing_ok=True)
    return cache


def bundle_tags(bundle: Path) -> dict[str, str]:
    """{tag: commit} of a bundle file ({} when git cannot read it)."""
    result = subprocess.run(
        ["git", "bundle", "list-heads", str(bundle)], capture_output=True, text=True
    )
    tags = {}
    for line in result.stdout.splitlines() if result.returncode == 0 else []:
        commit, _, ref = line.partition(" ")
        if ref.startswith("refs/tags/"):
            tags[ref.removeprefix("refs/tags/")] = commit
    return tags


def merge_bundles(bundles: list[Path], into: Path) -> bool:
    """Write one bundle with the tags of all `bundles` (later ones win); False if git fails."""
    from packaging.version import InvalidVersion, Version

    def version_key(tag: str):
        try:
            return (1, Version(tag.removeprefix("v")))
        except InvalidVersion:
            return (0, Version("0"))

    with tempfile.TemporaryDirectory(prefix="scaffold-bundle-") as tmp:

        def git(*args: str) -> bool:
            return subprocess.run(["git", *args], cwd=tmp, capture_output=True).returncode == 0

        if not git("init", "--quiet", "--bare"):
            return False
        for bundle in bundles:
            if not git("fetch", "--quiet", "--force", str(bundle), "refs/tags/*:refs/tags/*"):
                return False
        tags = sorted(bundle_tags_of_repo(Path(tmp)), key=version_key)
        if not tags:
            return False
        return (
            git("update-ref", "refs/heads/main", f"refs/tags/{tags[-1]}^{{commit}}")
            and git("symbolic-ref", "HEAD", "refs/heads/main")
            and git("bundle", "create", "--quiet", str(into), "--all")
        )


def bundle_tags_of_repo(repo: Path) -> list[str]:
    result = subprocess.run(
        ["git", "tag", "--list"], cwd=repo, capture_output=True, text=True, check=False
    )
    return result.stdout.split()


def refresh_caches() -> None:
    """Bring ~/.cache/scaffold up to date with every bundle of this installation (best effort)."""
    from scaffold import release

    bundles = bundle_dir()
    for name in (release.read_manifest(bundles) or {}).get("templates", {}):
        try:
            cached_bundle(name, bundles / f"{name}.bundle")
        except OSError:
            pass


def nearest_existing_dir(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


# Never a place for a project, even for root.
SYSTEM_DIRS = [Path(p) for p in ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc")]
SYSTEM_DIRS += [Path(p) for p in ("/sbin", "/sys", "/usr")]


def check_destination(dest: Path, force: bool) -> None:
    real = dest.resolve()
    system = next((d for d in SYSTEM_DIRS if real == d or d in real.parents), None)
    if system or real == Path("/"):
        raise UsageError(f"refusing to write into the system directory {system or '/'}")
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} exists and is not a directory: choose another DEST")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise UsageError(f"{dest} is not empty: choose another DEST or pass --force")
    anchor = nearest_existing_dir(dest)
    if not anchor.is_dir() or not os.access(anchor, os.W_OK | os.X_OK):
        raise ScaffoldError(f"cannot write to {anchor}: Permission denied; choose another DEST")


def list_files(root: Path) -> list[str]:
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and ".git" not in path.relative_to(root).parts
    )


def copier_copy(
    data: dict[str, object], into: Path, interactive: bool = False, name: str = "project"
) -> TemplateSource:
    """Render template `name` into `into`; its answers file records the version and stable URL.

    Every template rendered for a project (the project, and the components `scaffold add` writes)
    should go through here, so that `scaffold update` can update it later.
    """
    source = template_source(name)
    if source.version and "template_version" in data:
        data = {**data, "template_version": source.version}
    from_bundle = source.version is not None and not source.folder_is_release
    src = str(source.bundle if from_bundle else source.folder)
    render_template(src, into, data, source.tag if from_bundle else None, interactive)
    for answers in Path(into).glob(".copier-answers*.yml"):
        if f"_src_path: {src}\n" in answers.read_text(encoding="utf-8"):
            stamp_answers(answers, source)
    return source


def render_template(
    src: str, into: Path, data: dict[str, object], vcs_ref: str | None, interactive: bool = False
) -> None:
    """copier's run_copy of the template at `src` (at the tag `vcs_ref` of a bundle), errors
    turned into one line."""
    from copier import run_copy  # imported here so that `scaffold --help` stays instant

    try:
        run_copy(
            src,
            into,
            data=data,
            vcs_ref=vcs_ref,
            # pip byte-compiles the .py files of an installed template, and copier drops its
            # default excludes when copier.yml sets _subdirectory
            exclude=BYTECODE,
            defaults=not interactive,
            overwrite=True,
            quiet=True,
            unsafe=False,
        )
    except (KeyboardInterrupt, EOFError):
        raise ScaffoldError("cancelled: nothing was written") from None
    except Exception as error:  # copier reports template problems as many different types
        message = str(error).strip().splitlines()
        reason = message[0] if message else type(error).__name__
        raise ScaffoldError(f"rendering failed: {reason}") from None


def run_git(args: list[str], cwd: Path) -> None:
    identity = []
    probe = subprocess.run(["git", "config", "user.email"], cwd=cwd, capture_output=True, text=True)
    if not probe.stdout.strip():
        identity = ["-c", "user.name=scaffold", "-c", "user.email=scaffold@localhost"]
    result = subprocess.run(["git", *identity, *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise ScaffoldError(f"git {args[0]} failed: {lines[-1] if lines else 'no output'}")


def commit_project(root: Path, files: list[str], name: str) -> None:
    if not (root / ".git").exists():
        run_git(["init", "--quiet"], root)
    run_git(["add", "--", *files], root)
    staged = subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=root, capture_output=True)
    if staged.returncode == 0:  # --force over the same project: every file already committed
        return
    run_git(["commit", "--quiet", "-m", f"Generate {name} with scaffold {__version__}"], root)


def move_into(staging: Path, dest: Path) -> None:
    """Move the staged tree to `dest`: one rename for a new DEST, file by file with --force."""
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, dest)
        return
    if not any(dest.iterdir()):
        dest.rmdir()
        os.rename(staging, dest)
        return
    for source in sorted(staging.rglob("*")):
        target = dest / source.relative_to(staging)
        if source.is_dir():
            target.mkdir(exist_ok=True)
        else:
            os.replace(source, target)


@dataclass(frozen=True)
class Rendered:
    """What `scaffold new` wrote (or would write): every file, and those it replaced at DEST."""

    files: list[str]  # relative paths, sorted
    replaced: frozenset[str] = frozenset()


def listing(paths: list[str], few: int = 3) -> str:
    """'a, b, c and 2 more': a one-line list of paths."""
    shown = ", ".join(paths[:few])
    return f"{shown} and {len(paths) - few} more" if len(paths) > few else shown


def check_overwrites(dest: Path, staging: Path, files: list[str]) -> frozenset[str]:
    """The files of the render that already exist at DEST (which --force replaces).

    Refuses (ScaffoldError) to replace anything that could not be got back: in a git work tree,
    any uncommitted change to a tracked file, and any file not tracked that would change; outside
    one, any file that would change. Files already holding exactly what is rendered lose nothing.
    """
    for name in files:
        for part in [*reversed(Path(name).parents[:-1]), Path(name)]:
            target = dest / part
            if target.exists() and (target.is_dir() != (part != Path(name))):
                raise ScaffoldError(
                    f"{target} is in the way of {name}, which the project needs: move it away"
                )
    replaced = frozenset(name for name in files if (dest / name).exists())
    differing = sorted(
        name for name in replaced if (dest / name).read_bytes() != (staging / name).read_bytes()
    )
    top = work_tree_top(dest)
    if top is None:
        if differing:
            them = "it" if len(differing) == 1 else "them"
            raise ScaffoldError(
                f"{dest} is not in a git work tree and --force would overwrite "
                f"{listing(differing)}: move {them} away (or commit {them} to git) first"
            )
        return replaced
    tracked = set(git_paths(["ls-files", "-z"], dest))
    uncommitted = set(git_paths(["diff", "--name-only", "-z", "--relative"], dest))
    uncommitted |= set(git_paths(["diff", "--cached", "--name-only", "-z", "--relative"], dest))
    uncommitted |= {name for name in differing if name not in tracked}
    if uncommitted:
        raise ScaffoldError(
            f"{dest} has uncommitted changes that --force could overwrite "
            f"({listing(sorted(uncommitted))}): commit or stash them (git stash -u) first"
        )
    return replaced


def work_tree_top(folder: Path) -> Path | None:
    result = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=folder, capture_output=True, text=True
    )
    return Path(result.stdout.strip()) if result.returncode == 0 else None


def git_paths(args: list[str], cwd: Path) -> list[str]:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise ScaffoldError(f"git {args[0]} failed: {lines[-1] if lines else 'no output'}")
    return [path for path in result.stdout.split("\0") if path]


def create_project(
    project: NewProject,
    *,
    force: bool = False,
    git: bool = True,
    dry_run: bool = False,
    interactive: bool = False,
) -> Rendered:
    """Render `project` at its destination; say which files it wrote and which it replaced."""
    project.validate()
    dest = Path(os.path.abspath(project.dest))
    check_destination(dest, force)
    if interactive and not sys.stdin.isatty():
        raise UsageError("--interactive needs a terminal: drop it and pass the options as flags")
    if git and not dry_run and shutil.which("git") is None:
        raise ScaffoldError("git is not installed: install it, or pass --no-git")

    anchor = nearest_existing_dir(dest.parent)
    try:
        work_root = Path(tempfile.mkdtemp(prefix=".scaffold-", dir=anchor))
    except OSError as error:
        raise ScaffoldError(
            f"cannot write to {anchor}: {error.strerror}; choose another DEST"
        ) from None
    staging = work_root / project.name
    created_parents = []
    try:
        copier_copy(project.to_data(), staging, interactive)
        files = list_files(staging)
        replaced = frozenset()
        if dest.is_dir() and any(dest.iterdir()):  # --force: check_destination refused it else
            replaced = check_overwrites(dest, staging, files)
        if dry_run:
            return Rendered(files, replaced)
        refresh_caches()  # so that plain `copier update` finds the template later
        forced_into_repo = (dest / ".git").exists()
        if git and not forced_into_repo:
            commit_project(staging, files, project.name)
        for parent in reversed(dest.parents):
            if not parent.exists():
                created_parents.append(parent)
        existed = dest.exists()
        move_into(staging, dest)
        if git and forced_into_repo:
            try:
                commit_project(dest, files, project.name)
            except ScaffoldError:
                if not existed:
                    shutil.rmtree(dest, ignore_errors=True)
                raise
        return Rendered(files, replaced)
    except BaseException:
        for parent in reversed(created_parents):
            shutil.rmtree(parent, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
