"""The conflicts `scaffold update` leaves: merged as `git merge` would, and each one named.

Copier merges a file it cannot patch with `git merge-file`, which joins conflicts that only lines
without a letter or digit separate (blank lines, brackets): when a template release moves code,
an edit of the user's ends up in one block with unrelated code of the new version, hundreds of
lines from where that code went, and taking either side drops something. So each conflicted file
is merged again here from the same three versions that copier recorded in the index (1: the old
template, 2: the user's file, 3: the new template) with git's own merge, whose blocks hold only
the lines that really overlap: often the edit merges, and what is left is the user's edit in
code the new version no longer has at that place.

Then each block's first marker line says which of the user's edits it holds and where that code
is in the new version (file, function, line), and `scaffold update` prints the same for every
edit of the file. Where code went comes from the "What moved where" tables of the template's
CHANGELOG.md (one row: what, where it was, where it is; a cell names places as `file.py name`,
or `file.py` for the same name in that file), followed through every version the update spans;
where a table names several places, the one whose code is most like the template lines the user
changed wins (for an edit that only adds lines: the lines around it). Files other than Python
are merged again but not named.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BEFORE, AFTER = "<<<<<<< before updating", ">>>>>>> after updating"  # copier's labels
SEPARATOR = "======="
PLACE = re.compile(r"`([\w./-]+\.[A-Za-z]+)(?: ([A-Za-z_][\w.]*)(?:\(\))?)?`")
VERSION_HEADING = re.compile(r"^##\s+v?(\d+(?:\.\d+)*)\s*$")
STATEMENT = re.compile(r"(?:async\s+def|def|class)\s+(\w+)|(\w+)\s*(?::[^=]*)?=(?!=)")
METHOD = re.compile(r"    (?:async\s+def|def)\s+(\w+)")
# Lines of an edit compared with each place a table names: the template's lines the user changed
# or deleted decide where that code went; only where they do not (an edit that adds lines), the
# user's lines and the unchanged lines around them. A line counts when it is ALIKE to one of the
# place's lines (difflib's ratio) or more.
NEIGHBOURS, ALIKE = 4, 0.6


@dataclass(frozen=True)
class Place:
    file: str
    name: str | None = None  # a top-level name, or Class.method; None: the module itself

    def __str__(self) -> str:
        return f"{self.file} {shown(self.name)}" if self.name else self.file


def shown(name: str) -> str:
    """A function as `name()`; a class or a constant as it is."""
    return f"{name}()" if name.split(".")[-1][:1].islower() else name


@dataclass(frozen=True)
class Move:
    version: str  # the version that moved it
    what: str
    old: tuple[Place, ...]
    new: tuple[Place, ...]  # a Place without a name keeps the old name


@dataclass
class Edit:
    """One hunk of the user's changes to the old template's file."""

    old: Place  # where it was, in the old template's terms
    added: list[str]  # the user's lines
    removed: list[str]  # the template's lines they replaced or deleted
    ours: tuple[int, int]  # its lines in the user's file
    neighbours: list[str]  # the lines around it, in the user's file
    where: list[tuple[Place, str]] = field(default_factory=list)  # (place now, what)
    block: int | None = None  # the conflict block that holds it
    line: int | None = None  # its first line in the file after the update, from 1


@dataclass
class Block:
    marker: int  # index of its <<<<<<< line in the merged file
    ours: list[str]
    theirs: list[str]


# ---- the CHANGELOG's tables -----------------------------------------------------------------


def read_moves(changelog: str) -> list[Move]:
    """The rows of every "What moved where" table: | what | `old places` | `new places` |, each
    under the heading (## VERSION) of the version that moved the code; a row with no `what`
    continues the one above."""
    moves, version = [], None
    for line in changelog.splitlines():
        heading = VERSION_HEADING.match(line)
        if heading:
            version = heading.group(1)
            continue
        if version is None or not line.lstrip().startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3:
            continue
        old, new = places(cells[1]), places(cells[2])
        if old and new:
            what = cells[0] or (moves[-1].what if moves and moves[-1].version == version else "")
            moves.append(Move(version, what, old, new))
    return moves


def places(cell: str) -> tuple[Place, ...]:
    return tuple(Place(file, name) for file, name in PLACE.findall(cell) if file)


def version_key(text: str) -> tuple:
    from packaging.version import InvalidVersion, Version

    try:
        return (Version(text),)
    except InvalidVersion:
        return ()


def destinations(
    place: Place, moves: list[Move], old_version: str, new_version: str
) -> list[tuple[Place, str]]:
    """Every place the code at `place` (of old_version) may be in new_version, with the `what`
    of the last row that moved it ("" where no row did), before checking which exist."""
    low, high = version_key(old_version), version_key(new_version)
    versions = sorted(
        {move.version for move in moves if low < version_key(move.version) <= high},
        key=version_key,
    )
    current = [(place, "")]
    for version in versions:
        rows = [move for move in moves if move.version == version]
        following = []
        for here, what in current:
            for move in rows:
                if any(covers(old, here) for old in move.old):
                    following += [
                        (Place(new.file, new.name or here.name), move.what) for new in move.new
                    ]
            following.append((here, what))  # whatever no row moved stays, if it is still there
        current = list(dict.fromkeys(following))
    return current


def covers(row: Place, here: Place) -> bool:
    """Whether a table's place names the code at `here` (a class names its methods)."""
    if row.file != here.file:
        return False
    if row.name is None or row.name == here.name:
        return True
    return bool(here.name) and here.name.startswith(row.name + ".")


# ---- Python's top-level statements, by line ----------------------------------------------------


def statements(lines: list[str]) -> list[tuple[int, str | None]]:
    """(first line, name) of each top-level definition or assignment, in order; methods get
    Class.method entries too. Name None: a statement of no name (imports, `if __name__`)."""
    found, decorated, current_class = [], None, None
    for index, line in enumerate(lines):
        if not line or line[0] in " \t#)]}\"'":
            method = METHOD.match(line) if current_class else None
            if method:
                found.append((index, f"{current_class}.{method.group(1)}"))
            continue
        if line.startswith("@"):
            decorated = index if decorated is None else decorated
            continue
        match = STATEMENT.match(line)
        name = (match.group(1) or match.group(2)) if match else None
        current_class = name if line.startswith("class ") else None
        found.append((index if decorated is None else decorated, name))
        decorated = None
    return found


def enclosing(lines: list[str], index: int) -> str | None:
    """The name of the top-level statement (or method) line `index` belongs to."""
    name, top = None, None
    for start, found in statements(lines):
        if start > index:
            break
        if found and "." in found and top and found.startswith(top + "."):
            name = found
        else:
            name = top = found
    return name


def span(lines: list[str], name: str) -> tuple[int, int] | None:
    """The lines [start, end) of the definition of `name` (top-level, or Class.method)."""
    found = statements(lines)
    for number, (start, found_name) in enumerate(found):
        if found_name != name:
            continue
        later = [
            other
            for other, other_name in found[number + 1 :]
            if "." not in (other_name or "") or "." in name
        ]
        return start, later[0] if later else len(lines)
    return None


# ---- merging again ----------------------------------------------------------------------------


def git_merge(base: bytes, ours: bytes, theirs: bytes) -> bytes | None:
    """What `git merge` makes of the three versions of one file, with copier's labels on the
    conflicts; None if git could not say."""
    environment = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "scaffold",
        "GIT_AUTHOR_EMAIL": "scaffold@localhost",
        "GIT_COMMITTER_NAME": "scaffold",
        "GIT_COMMITTER_EMAIL": "scaffold@localhost",
    }

    def git(*args: str, check: bool = True) -> int:
        done = subprocess.run(
            ["git", "-c", "merge.conflictStyle=merge", "-c", "core.autocrlf=false", *args],
            cwd=scratch,
            env=environment,
            capture_output=True,
        )
        if check and done.returncode:
            raise OSError(done.stderr.decode(errors="replace"))
        return done.returncode

    with tempfile.TemporaryDirectory(prefix="scaffold-merge-") as scratch:
        path = Path(scratch, "file")
        try:
            git("init", "--quiet")
            for branch, content in (("base", base), ("theirs", theirs), ("ours", ours)):
                if branch != "base":
                    git("checkout", "--quiet", "-B", branch, "base")
                path.write_bytes(content)
                git("add", "file")
                git("commit", "--quiet", "--allow-empty", "--no-verify", "-m", branch)
                if branch == "base":
                    git("branch", "base")
            git("merge", "--quiet", "--no-edit", "--no-ff", "theirs", check=False)
        except OSError:
            return None
        merged = path.read_bytes()
    labels = {b"<<<<<<< HEAD": BEFORE.encode(), b">>>>>>> theirs": AFTER.encode()}
    lines = []
    for line in merged.split(b"\n"):
        label = line.rstrip(b"\r")
        lines.append(labels[label] + line[len(label) :] if label in labels else line)
    return b"\n".join(lines)


def blocks_of(lines: list[str]) -> list[Block]:
    blocks, current, side = [], None, None
    for index, line in enumerate(lines):
        line = line.rstrip("\r")
        if line.startswith(BEFORE) and current is None:
            current, side = Block(index, [], []), "ours"
        elif current is not None and line == SEPARATOR and side == "ours":
            side = "theirs"
        elif current is not None and line.startswith(AFTER) and side == "theirs":
            blocks.append(current)
            current = side = None
        elif current is not None:
            (current.ours if side == "ours" else current.theirs).append(line)
    return blocks


def inside_blocks(lines: list[str]) -> set[int]:
    """Indices of the lines that belong to a conflict (markers and both sides)."""
    inside, depth = set(), False
    for index, line in enumerate(lines):
        if line.startswith(BEFORE):
            depth = True
        if depth:
            inside.add(index)
        if line.startswith(AFTER):
            depth = False
    return inside


def find_run(lines: list[str], needle: list[str], start: int = 0) -> int | None:
    if not needle:
        return None
    for index in range(start, len(lines) - len(needle) + 1):
        if lines[index : index + len(needle)] == needle:
            return index
    return None


# ---- the user's edits and where they are now ------------------------------------------------


def find_edits(base: list[str], ours: list[str], file: str) -> list[Edit]:
    """The user's changes to the old template's `file`, hunk by hunk, each named by the
    top-level statement it is in (for a line added between two, the one before it)."""
    matcher = difflib.SequenceMatcher(None, base, ours, autojunk=False)
    known = {name for _, name in statements(base)}
    edits = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        if i2 > i1:
            name = enclosing(base, i1)
        else:  # added lines: what they are in, in the user's file, if the template had it
            name = enclosing(ours, j1)
            if name not in known:
                name = enclosing(base, max(i1 - 1, 0))
        around = [*ours[max(j1 - NEIGHBOURS, 0) : j1], *ours[j2 : j2 + NEIGHBOURS]]
        edits.append(Edit(Place(file, name), ours[j1:j2], base[i1:i2], (j1, j2), around))
    return edits


def telling(lines: list[str]) -> list[str]:
    """The lines worth comparing: stripped, without the blank ones and lone brackets."""
    stripped = (line.strip() for line in lines)
    return [line for line in stripped if line not in ("", "(", ")", "]", "}", "):", "],", "},")]


def likeness(wanted_lines: list[str], lines: list[str]) -> float:
    """How alike some lines are to a place's code: per line, the ratio of the most alike line
    of the place, counted from ALIKE up."""
    candidates = [line.strip() for line in lines if line.strip()]
    score = 0.0
    for wanted in wanted_lines:
        best = 0.0
        for line in candidates:
            matcher = difflib.SequenceMatcher(None, wanted, line, autojunk=False)
            if matcher.real_quick_ratio() > best and matcher.quick_ratio() > best:
                best = max(best, matcher.ratio())
        score += best if best >= ALIKE else 0.0
    return score


def place_edits(
    edits: list[Edit],
    moves: list[Move],
    old_version: str,
    new_version: str,
    read: Callable[[str], list[str] | None],
) -> None:
    """Fill in each edit's `where`: the places of the new version its code may be in, the most
    alike first; only places that exist there."""
    for edit in edits:
        found = []
        for place, what in destinations(edit.old, moves, old_version, new_version):
            lines = read(place.file)
            if lines is None or (place.name and span(lines, place.name) is None):
                continue
            found.append((place, what))
        if len(found) > 1:

            def score(item, edit=edit):
                lines = read(item[0].file)
                start, end = span(lines, item[0].name) if item[0].name else (0, len(lines))
                code = lines[start:end]
                removed = telling(edit.removed[:NEIGHBOURS])
                rest = telling(edit.added[:NEIGHBOURS] + edit.neighbours)
                return likeness(removed, code), likeness(rest, code)

            found.sort(key=score, reverse=True)
        edit.where = found


# ---- one conflicted file ------------------------------------------------------------------------


@dataclass
class FileReport:
    path: str  # relative to the project root
    edits: list[Edit]
    moved: bool  # whether a CHANGELOG table placed any edit


def improve_file(
    root: Path,
    top: Path,
    path: str,
    moves: list[Move],
    old_version: str,
    new_version: str,
) -> FileReport | None:
    """Merge the conflicted `path` again with git's merge, then name each conflict's edits;
    returns what to print about the file (None where the index lacks a version of it)."""
    from scaffold.update import git

    in_top = (root / path).resolve().relative_to(top).as_posix()
    versions = []
    for stage in (1, 2, 3):
        shown = subprocess.run(
            ["git", "show", f":{stage}:{in_top}"], cwd=top, capture_output=True, check=False
        )
        if shown.returncode:
            return None
        versions.append(shown.stdout)
    if any(b"\0" in version for version in versions):
        return None
    merged = git_merge(*versions)
    if merged is None:
        return None
    (root / path).write_bytes(merged)
    try:
        lines = merged.decode("utf-8").split("\n")
        base, ours, theirs = (version.decode("utf-8").split("\n") for version in versions)
    except UnicodeDecodeError:
        return None
    if not blocks_of(lines):  # git's merge takes it all: no conflict left in this file
        git(["reset", "--quiet", "--", in_top], top)
        return None
    if not path.endswith(".py"):  # the edits are named by Python's definitions
        return None
    edits = find_edits(base, ours, path)

    def read(file: str) -> list[str] | None:
        if file == path:
            return theirs
        if not file.endswith(".py"):
            return None
        try:
            return (root / file).read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError):
            return None

    place_edits(edits, moves, old_version, new_version, read)
    blocks = blocks_of(lines)
    assign_blocks(edits, blocks, ours, lines)
    for number, block in enumerate(blocks):
        held = [edit for edit in edits if edit.block == number]
        lines[block.marker] = (
            f"{BEFORE}: {block_note(held, block, theirs, path, root, new_version)}"
        )
    (root / path).write_text("\n".join(lines), encoding="utf-8")
    moved = any(what for edit in edits for _, what in edit.where[:1])
    return FileReport(path, edits, moved)


def assign_blocks(edits: list[Edit], blocks: list[Block], ours: list[str], merged: list[str]):
    """Which block holds each edit (its lines are in the block's side "before updating"), and
    the line of the merged file where each edit's first line is."""
    start = 0
    located = []
    for block in blocks:
        at = find_run(ours, block.ours, start)
        located.append(None if at is None else (at, at + len(block.ours)))
        if at is not None:
            start = at + len(block.ours)
    inside = inside_blocks(merged)
    for edit in edits:
        first, last = edit.ours
        for number, where in enumerate(located):
            if where and (
                where[0] <= first < where[1] or (first == last and where[0] <= first <= where[1])
            ):
                edit.block = number
                break
        if edit.added:
            wanted = edit.added[0]
            if edit.block is not None:
                block = blocks[edit.block]
                offset = find_run(block.ours, edit.added)
                if offset is not None:
                    edit.line = block.marker + 2 + offset
                    continue
            for index, line in enumerate(merged):
                if line == wanted and index not in inside:
                    edit.line = index + 1
                    break


def definition_line(root: Path, place: Place) -> int | None:
    """The line of `place`'s definition in the project's file now, outside the conflicts."""
    try:
        lines = (root / place.file).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError):
        return None
    if not place.name:
        return None
    inside = inside_blocks(lines)
    outside = [line if index not in inside else "" for index, line in enumerate(lines)]
    found = span(outside, place.name)
    if found is None:
        return None
    start = found[0]
    while start < len(outside) and outside[start].startswith("@"):
        start += 1
    return start + 1


def where_text(edit: Edit, root: Path, version: str) -> str:
    """ "options.py parse_args() (line 74)", or what there is to say where it went."""
    if not edit.where:
        return f"template {version} has no {edit.old} (see CHANGELOG.md)"
    place, _ = edit.where[0]
    line = definition_line(root, place)
    return f"{place}" + (f" (line {line})" if line else "")


def block_note(
    held: list[Edit], block: Block, theirs: list[str], path: str, root: Path, version: str
) -> str:
    """What a conflict's first marker line says: the edits it holds and where they belong."""
    if held:
        notes = []
        for edit in held:
            name = shown(edit.old.name) if edit.old.name else edit.old.file
            notes.append(f"your edit to {name} belongs in {where_text(edit, root, version)}")
        return "; ".join(dict.fromkeys(notes))
    at = find_run(theirs, block.theirs) if block.theirs else None
    name = enclosing(theirs, at) if at is not None else None
    return (
        f"template {version} changed {path} {shown(name)}"
        if name
        else f"template {version} changed this"
    )


def quote(edit: Edit, width: int = 72) -> str:
    lines = [line.strip() for line in edit.added if line.strip()]
    if not lines:
        removed = [line.strip() for line in edit.removed if line.strip()]
        text = f"deleted {removed[0]}" if removed else "blank lines"
        more = len(removed) - 1
    else:
        text, more = lines[0], len(lines) - 1
    if len(text) > width:
        text = text[: width - 3] + "..."
    return text + (f" (and {more} more line{'s' if more > 1 else ''})" if more > 0 else "")


def report_lines(report: FileReport, root: Path, version: str) -> list[str]:
    """What `scaffold update` prints about a file left with conflicts: each of the user's edits,
    merged or in a conflict, and where its code is in the new version."""
    source = ' (CHANGELOG.md, "What moved where")' if report.moved else ""
    lines = [f"{report.path}: your edits, and where that code is in template {version}{source}:"]
    for edit in report.edits:
        name = shown(edit.old.name) if edit.old.name else "module level"
        at = f"{report.path}:{edit.line}" if edit.line else report.path
        state = "conflict" if edit.block is not None else "merged"
        lines.append(f"  {at} ({state}) {name}: {quote(edit)}")
        what = edit.where[0][1] if edit.where else ""
        lines.append(f"      -> {what + ': ' if what else ''}{where_text(edit, root, version)}")
    if any(edit.block is not None for edit in report.edits):
        lines.append(
            "  In each conflict, make your edit where its code is now, then keep the side "
            "after updating."
        )
    return lines
