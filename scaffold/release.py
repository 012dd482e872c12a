"""Build the template bundles: the history of every released template version, shipped in the wheel.

Why: copier updates a project by rendering the template at the version the project records
(`_commit` in its answers file) and at the new one, and merging the difference into the project.
It can only check out an old version from a git repository *root* or a git bundle. Our templates
live in a subfolder of this repository (templates/<name>), and an installed package has no git at
all, so the release step turns each template's history into a small bundle of its own:

    one linear history per template, one commit per scaffold version (tags `vX.Y.Z` of this repo),
    the template folder at the root of each commit (copier.yml on top), tagged `vX.Y.Z`.

Output: scaffold/bundles/<name>.bundle for every templates/<name>/copier.yml, and manifest.json
(the installed version, and a digest of each template folder so that `scaffold new` can tell
whether the folder it ships is exactly the bundled version and render from it directly).

    python -m scaffold.release             # every v* tag up to __version__, plus the working tree
                                           # as v<__version__> (what the wheel will carry)
    python -m scaffold.release --release   # the same, but refuse unless v<__version__> is tagged
                                           # and the templates equal the tagged ones (full clone)
    python -m scaffold.release --check     # exit 1 if the built bundles are missing or stale

Commits are deterministic (fixed author, dates of the tagged commits), so every build on every
machine gives a version the same commit id; caches built by different installs agree.

Imports: standard library only at module level (the wheel build hook imports this module in a
bare build environment; `packaging` comes with hatchling there and with copier at run time).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

BUNDLE_DIR = Path(__file__).resolve().parent / "bundles"
MANIFEST = "manifest.json"
RELEASES_FILE = "RELEASES"
IDENTITY = {
    "GIT_AUTHOR_NAME": "scaffold release",
    "GIT_AUTHOR_EMAIL": "release@scaffold.invalid",
    "GIT_COMMITTER_NAME": "scaffold release",
    "GIT_COMMITTER_EMAIL": "release@scaffold.invalid",
}
SKIP_DIRS = {"__pycache__", ".git"}
SKIP_SUFFIXES = (".pyc", ".pyo")


class ReleaseError(Exception):
    """The bundles cannot be built as asked; the message says why and what to do."""


# -- the digest of a template folder, the same whether computed from git or from disk ----------


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _digest(entries: list[tuple[str, str, str]]) -> str:
    """sha256 over sorted (path, mode, blob id): equal digests mean equal trees."""
    text = "".join(f"{mode} {blob} {path}\n" for path, mode, blob in sorted(entries))
    return hashlib.sha256(text.encode()).hexdigest()


def folder_digest(folder: Path) -> str:
    """Digest of the files under `folder` as git would commit them (caches and bytecode skipped)."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [name for name in dirnames if name not in SKIP_DIRS]
        for name in filenames:
            if name.endswith(SKIP_SUFFIXES):
                continue
            path = os.path.join(dirpath, name)
            relative = Path(path).relative_to(folder).as_posix()
            if os.path.islink(path):
                entries.append((relative, "120000", _blob_id(os.fsencode(os.readlink(path)))))
                continue
            with open(path, "rb") as file:
                data = file.read()
            mode = "100755" if os.stat(path).st_mode & 0o111 else "100644"
            entries.append((relative, mode, _blob_id(data)))
    return _digest(entries)


def tree_digest(git_dir: Path, tree: str) -> str:
    listing = _git(["ls-tree", "-r", "-z", tree], cwd=git_dir)
    entries = []
    for record in filter(None, listing.split("\0")):
        meta, path = record.split("\t", 1)
        mode, _kind, blob = meta.split()
        entries.append((path, mode, blob))
    return _digest(entries)


def read_manifest(bundle_dir: Path) -> dict | None:
    try:
        manifest = json.loads((bundle_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "templates" in manifest else None


# -- git ----------------------------------------------------------------------------------------


def _git(args: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> str:
    result = subprocess.run(
        ["git", "-c", "core.hooksPath=/dev/null", "-c", "commit.gpgSign=false", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
    )
    if check and result.returncode:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise ReleaseError(f"git {args[0]} failed: {lines[-1] if lines else 'no output'}")
    return result.stdout.strip() if result.returncode == 0 else ""


def read_version(repo: Path) -> str:
    text = (repo / "scaffold" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", text, re.MULTILINE)
    if not match:
        raise ReleaseError(f"no __version__ in {repo / 'scaffold' / '__init__.py'}")
    return match.group(1)


def template_names(repo: Path) -> list[str]:
    root = repo / "templates"
    return sorted(p.parent.name for p in root.glob("*/copier.yml")) if root.is_dir() else []


def recorded_releases(repo: Path) -> dict[str, str]:
    """{version: commit} from the RELEASES file: each release's commit, written down so that a
    clone without tags (many CI checkouts and mirrors fetch none) still has the history."""
    path = repo / RELEASES_FILE
    if not path.is_file():
        return {}
    releases = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 2:
            raise ReleaseError(f"{path} line {number}: expected VERSION COMMIT, got {line!r}")
        releases[words[0]] = words[1]
    return releases


def released_tags(
    repo: Path, version: str, warn=lambda message: None
) -> list[tuple[str, str, str]]:
    """(version, tag, revision) of every release up to and including `version`, oldest first:
    each `v<PEP 440>` tag, and each release in RELEASES that has no tag here (revision: its
    commit). A recorded release whose commit this clone lacks is left out, with a warning."""
    from packaging.version import InvalidVersion, Version

    current = Version(version)
    found: dict[str, tuple[Version, str]] = {}
    for tag in _git(["tag", "--list", "v[0-9]*"], cwd=repo).splitlines():
        try:
            parsed = Version(tag[1:])
        except InvalidVersion:
            continue
        if parsed <= current:
            found[tag] = (parsed, tag)
    for recorded, commit in recorded_releases(repo).items():
        tag = f"v{recorded}"
        if tag in found or Version(recorded) > current:
            continue
        if _git(["rev-parse", "--verify", "-q", f"{commit}^{{commit}}"], cwd=repo, check=False):
            found[tag] = (Version(recorded), commit)
        else:
            warn(
                f"RELEASES names {commit} for {tag}, which this clone lacks (git fetch --unshallow)"
            )
    ordered = sorted(found.items(), key=lambda item: item[1][0])
    return [(str(parsed), tag, revision) for tag, (parsed, revision) in ordered]


# -- building -----------------------------------------------------------------------------------


def build_bundles(repo: Path, out: Path = BUNDLE_DIR, *, release: bool = False, warn=None) -> dict:
    """Write out/<name>.bundle for every template of `repo`, then out/manifest.json; return it."""
    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
    repo = repo.resolve()
    if not _git(["rev-parse", "--is-inside-work-tree"], cwd=repo, check=False) == "true":
        raise ReleaseError(f"{repo} is not a git checkout: the bundles are built from its history")
    version = read_version(repo)
    tag = f"v{version}"
    names = template_names(repo)
    if not names:
        raise ReleaseError(f"no templates/<name>/copier.yml under {repo}")
    shallow = _git(["rev-parse", "--is-shallow-repository"], cwd=repo) == "true"
    if shallow:
        message = "this is a shallow clone: older template versions may be missing from the bundles"
        if release:
            raise ReleaseError(message + " (git fetch --unshallow --tags)")
        warn(message)
    tags = released_tags(repo, version, warn)
    if release and tag not in {t for _, t, _ in tags}:
        raise ReleaseError(f"{tag} is not tagged: commit the release, `git tag {tag}`, build again")
    if release:
        check_version_defaults(repo, names, version)
    head = _git(["rev-parse", "--verify", "-q", "HEAD^{commit}"], cwd=repo, check=False)
    objects = Path(_git(["rev-parse", "--git-common-dir"], cwd=repo))
    objects = (objects if objects.is_absolute() else repo / objects) / "objects"

    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"version": version, "tag": tag, "templates": {}}
    with tempfile.TemporaryDirectory(prefix="scaffold-release-") as tmp:
        work = Path(tmp) / "history.git"
        _git(["init", "--quiet", "--bare", str(work)], cwd=Path(tmp))
        (work / "objects" / "info" / "alternates").write_text(f"{objects}\n")
        # The working tree's templates as git would commit them, without touching the repo's
        # index or object store: a private index, new objects written to the temporary repo.
        private = {
            "GIT_INDEX_FILE": str(Path(tmp) / "index"),
            "GIT_OBJECT_DIRECTORY": str(work / "objects"),
            "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(objects),
        }
        if head:
            _git(["read-tree", head], cwd=repo, env=private)
        _git(["add", "--all", "--", "templates"], cwd=repo, env=private)
        _git(["write-tree"], cwd=repo, env=private)
        worktree_date = _commit_date(repo, head) if head else "946684800 +0000"

        for name in names:
            current_tree = _git(
                ["write-tree", f"--prefix=templates/{name}/"], cwd=repo, env=private
            )
            history = []  # (version, tag, tree, date)
            for past_version, past_tag, revision in tags:
                tree = _git(
                    ["rev-parse", "--verify", "-q", f"{revision}^{{commit}}:templates/{name}"],
                    cwd=repo,
                    check=False,
                )
                if not tree:
                    continue  # this template did not exist yet at that release
                if past_tag == tag:
                    if tree != current_tree:
                        message = (
                            f"templates/{name} differs from its released {tag}: bump __version__ "
                            f"(for example to the next .dev0) before changing a released template"
                        )
                        if release:
                            raise ReleaseError(message)
                        warn(message + f"; bundling the working tree as {tag}")
                    continue
                history.append((past_version, past_tag, tree, _commit_date(repo, revision)))
            released_date = next(
                (_commit_date(repo, revision) for _, t, revision in tags if t == tag),
                worktree_date,
            )
            history.append((version, tag, current_tree, released_date))

            parent = None
            for _version, version_tag, tree, date in history:
                args = ["commit-tree", tree, "-m", f"{name} template {version_tag}"]
                if parent:
                    args += ["-p", parent]
                env = {**IDENTITY, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
                parent = _git(args, cwd=work, env=env)
                _git(["update-ref", f"refs/tags/{version_tag}", parent], cwd=work)
            _git(["update-ref", "refs/heads/main", parent], cwd=work)
            _git(["symbolic-ref", "HEAD", "refs/heads/main"], cwd=work)
            target = out / f"{name}.bundle"
            partial = out / f".{name}.bundle.{os.getpid()}.tmp"
            _git(["bundle", "create", "--quiet", str(partial), "--all"], cwd=work)
            os.replace(partial, target)
            refs = _git(
                ["for-each-ref", "--format=%(refname)", "refs/tags", "refs/heads"], cwd=work
            )
            for old in refs.split():  # the next template starts from no refs
                _git(["update-ref", "-d", old], cwd=work)
            manifest["templates"][name] = {
                "tag": tag,
                "commit": parent,
                "digest": tree_digest(work, current_tree),  # what the bundle holds
                # what the folder held when built (differs only by files git ignores)
                "source_digest": folder_digest(repo / "templates" / name),
                "versions": [v for v, *_ in history],
            }
    partial = out / f".{MANIFEST}.{os.getpid()}.tmp"
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, out / MANIFEST)
    return manifest


def check_version_defaults(repo: Path, names: list[str], version: str) -> None:
    """The hidden `template_version` answer must default to the release: plain `copier update`
    renders hidden answers from their defaults (scaffold passes the version explicitly)."""
    for name in names:
        text = (repo / "templates" / name / "copier.yml").read_text(encoding="utf-8")
        block = re.search(r"^template_version:\n((?:[ \t]+.*\n?)*)", text, re.MULTILINE)
        if not block:
            continue
        default = re.search(r"^\s+default:\s*[\"']?([^\"'\s]+)", block.group(1), re.MULTILINE)
        if not default or default.group(1) != version:
            found = default.group(1) if default else "nothing"
            raise ReleaseError(
                f"templates/{name}/copier.yml: template_version defaults to {found}, "
                f"not {version}: set it to the release"
            )


def _commit_date(repo: Path, rev: str) -> str:
    return _git(["log", "-1", "--format=%ct +0000", f"{rev}^{{commit}}"], cwd=repo)


def stale_templates(repo: Path, out: Path = BUNDLE_DIR) -> list[str]:
    """Templates of the checkout `repo` whose bundle in `out` is missing or out of date."""
    manifest = read_manifest(out) or {"templates": {}}
    fresh_version = manifest.get("version") == read_version(repo)
    stale = []
    for name in template_names(repo):
        entry = manifest["templates"].get(name)
        if (
            entry is None
            or not fresh_version
            or not (out / f"{name}.bundle").is_file()
            or folder_digest(repo / "templates" / name)
            not in (entry.get("digest"), entry.get("source_digest"))
        ):
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scaffold.release", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--out", type=Path, help="default: REPO/scaffold/bundles")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--release", action="store_true", help="refuse anything but a tagged release")
    mode.add_argument("--check", action="store_true", help="exit 1 if the bundles are stale")
    args = parser.parse_args(argv)
    out = args.out or args.repo / "scaffold" / "bundles"
    try:
        if args.check:
            stale = stale_templates(args.repo, out)
            if stale:
                print(f"stale template bundles: {', '.join(stale)} (python -m scaffold.release)")
                return 1
            print("template bundles are up to date")
            return 0
        manifest = build_bundles(args.repo, out, release=args.release)
    except ReleaseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, entry in manifest["templates"].items():
        print(f"{out / (name + '.bundle')}: {', '.join('v' + v for v in entry['versions'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
