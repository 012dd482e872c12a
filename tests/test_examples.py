"""generated_examples/ is exactly what a fresh render writes (see scaffold/examples.py).

When this fails after a template change: run `scaffold examples` (or `make examples`), look at the
diff of generated_examples/ and commit it with the template change.
"""

from __future__ import annotations

import os

import pytest
from helpers import tree_hash

from scaffold.cli import main
from scaffold.examples import compare, default_dir, normalise_answers, render_examples, tree
from scaffold.variants import BY_NAME, EXAMPLES


def run_cli(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as done:
        return done.code
    return 0


def test_the_committed_examples_match_a_fresh_render(capsys):
    assert default_dir().is_dir(), "generated_examples/ is missing: run `scaffold examples`"
    code = run_cli("examples", "--check")
    out, err = capsys.readouterr()
    assert code == 0, (
        "generated_examples/ differs from a fresh render. Run `scaffold examples` (make examples) "
        f"and commit the result with the template change:\n{out}{err}"
    )


def test_the_examples_are_the_ones_the_issue_names():
    chosen = {name: BY_NAME[name] for name in EXAMPLES}
    minimal = [v for v in chosen.values() if v.model == "lenet"]
    assert minimal and not (minimal[0].ddp or minimal[0].vscode or minimal[0].hooks)
    assert any(v.model == "resnet18" and v.ddp for v in chosen.values())
    assert any(v.model == "vit_b_16" and v.hooks and v.vscode for v in chosen.values())


def test_examples_written_elsewhere_check_clean_and_report_an_edit_as_a_diff(tmp_path, capsys):
    target = tmp_path / "examples"
    target.mkdir()  # an empty folder is as good as none
    assert run_cli("examples", "--into", str(target)) == 0
    assert {path.name for path in target.iterdir()} == {*EXAMPLES, "README.md"}
    assert not list(target.rglob(".git")), "examples are rendered without git"
    assert run_cli("examples", "--check", "--into", str(target)) == 0
    capsys.readouterr()

    train = target / EXAMPLES[0] / "train.py"
    train.write_text(train.read_text().replace("def main(", "def main_renamed(", 1))
    (target / EXAMPLES[0] / "stray.txt").write_text("left over\n")
    (target / EXAMPLES[1] / "README.md").unlink()
    cache = target / EXAMPLES[0] / "__pycache__"  # what running an example's tests leaves: ignored
    cache.mkdir()
    (cache / "train.cpython-311.pyc").write_bytes(b"\0")
    assert run_cli("examples", "--check", "--into", str(target)) == 1
    out, err = capsys.readouterr()
    assert f"differs: {EXAMPLES[0]}/train.py" in out
    assert "-def main_renamed(" in out and "+def main(" in out  # committed -> fresh
    assert f"unexpected: {EXAMPLES[0]}/stray.txt" in out
    assert f"missing: {EXAMPLES[1]}/README.md" in out
    assert "__pycache__" not in out
    assert "run `scaffold examples`" in err

    assert run_cli("examples", "--into", str(target)) == 0  # regenerating repairs everything
    assert run_cli("examples", "--check", "--into", str(target)) == 0


def refusal(capsys, tmp_path, target) -> tuple[int, str]:
    before = tree_hash(tmp_path)
    code = run_cli("examples", "--into", str(target))
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, out + err
    assert tree_hash(tmp_path) == before
    return code, err


def test_examples_never_replace_a_folder_they_did_not_write(tmp_path, capsys):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_text("two years of work\n")
    expected = (
        2,
        f"error: {target} is not empty and holds no examples written by `scaffold examples` "
        "(no README.md from it), so it is not replaced: choose another --into DIR\n",
    )
    assert refusal(capsys, tmp_path, target) == expected
    (target / "README.md").write_text("# Generated examples\n\nMy own notes.\n")
    assert refusal(capsys, tmp_path, target) == expected


def test_examples_refuse_a_file_as_the_folder(tmp_path, capsys):
    target = tmp_path / "examples"
    target.write_text("a file\n")
    assert refusal(capsys, tmp_path, target) == (
        2,
        f"error: {target} is not a folder: choose another --into DIR\n",
    )


def test_the_readme_command_line_renders_the_same_files(tmp_path):
    """`scaffold new NAME <Variant.flags()> --no-git`, the line generated_examples/README.md shows,
    writes what `scaffold examples` writes: the examples are what users get."""
    name = EXAMPLES[0]
    render_examples(tmp_path / "examples", (name,))
    assert run_cli("new", str(tmp_path / "cli" / name), *BY_NAME[name].flags(), "--no-git") == 0
    answers = tmp_path / "cli" / name / ".copier-answers.yml"
    answers.write_text(normalise_answers(answers.read_text()))
    assert compare(tmp_path / "examples" / name, tmp_path / "cli" / name) == []
    readme = (tmp_path / "examples" / "README.md").read_text()
    assert f"scaffold new {name} {' '.join(BY_NAME[name].flags())} --no-git" in readme


def test_the_executable_bit_is_compared(tmp_path):
    fresh, committed = tmp_path / "fresh", tmp_path / "committed"
    for root in (fresh, committed):
        (root / "scripts").mkdir(parents=True)
        (root / "scripts" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(fresh / "scripts" / "run.sh", 0o755)
    os.chmod(committed / "scripts" / "run.sh", 0o644)
    assert compare(fresh, committed) == ["mode differs: scripts/run.sh should be executable"]
    assert sorted(tree(fresh)) == ["scripts/run.sh"]


@pytest.mark.parametrize(
    "rendered",
    [
        "_commit: v0.1.0\n_src_path: ~/.cache/scaffold/project.bundle\nmodel: lenet\n"
        "template_version: 0.1.0\n",
        # a checkout without git history renders from the folder: absolute path, no _commit
        "_src_path: /home/someone/scaffold/templates/project\nmodel: lenet\n"
        "template_version: 0.1.0\n",
    ],
)
def test_the_answers_file_is_normalised_to_what_an_installed_scaffold_writes(rendered):
    assert normalise_answers(rendered) == (
        "_commit: v0.1.0\n_src_path: ~/.cache/scaffold/project.bundle\nmodel: lenet\n"
        "template_version: 0.1.0\n"
    )
