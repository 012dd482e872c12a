"""NewProject (scaffold/options.py) is the one declaration of the choices of `scaffold new`: the
project template asks the same questions with the same defaults, the command line has an option
for each, and the variants are spelled from it."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from helpers import run_cli

from scaffold import render
from scaffold.catalog import DATASETS, MODELS
from scaffold.options import NewProject, answer_fields, answer_names, shadowing
from scaffold.render import Rendered, create_project, template_dir
from scaffold.variants import VARIANTS, Variant


@pytest.fixture(scope="module")
def questions() -> dict:
    config = yaml.safe_load((template_dir("project") / "copier.yml").read_text(encoding="utf-8"))
    return {key: spec for key, spec in config.items() if not key.startswith("_")}


def test_copier_choices_are_the_catalog(questions):
    assert questions["model"]["choices"] == list(MODELS)
    assert questions["dataset"]["choices"] == list(DATASETS)


def test_every_answer_is_a_question_with_the_same_default(questions):
    assert answer_names(), "NewProject declares no answers"
    for item in answer_fields():
        assert item.name in questions, f"copier.yml has no question {item.name!r}"
        assert questions[item.name].get("default") == item.default, item.name
        kind = {bool: "bool", int: "int", str: "str"}[type(item.default)]
        assert questions[item.name].get("type", "str") == kind, item.name


def test_to_data_holds_every_answer_and_nothing_else(questions):
    data = NewProject(dest=Path("somewhere") / "proj").to_data()
    assert set(data) == {"project_name", "template_version", *answer_names()}
    assert set(data) <= set(questions)
    assert data["project_name"] == "proj"


def test_to_data_leaves_out_what_copier_should_ask():
    project = NewProject(dest=Path("proj"), model="lenet", answered=frozenset({"model"}))
    assert project.to_data().keys() == {"project_name", "model", "template_version"}


def test_dest_and_answered_are_not_answers():
    assert {item.name for item in fields(NewProject)} - set(answer_names()) == {
        "dest",
        "answered",
    }


@pytest.mark.parametrize("variant", VARIANTS, ids=[variant.name for variant in VARIANTS])
def test_variant_flags_parse_back_to_the_same_project(tmp_path, capsys, monkeypatch, variant):
    """`scaffold new DEST <Variant.flags()> --dry-run` builds exactly Variant.project()."""
    seen = []

    def record(project, **options):
        seen.append((project, options))
        return Rendered([])

    monkeypatch.setattr(render, "create_project", record)
    code, _, err = run_cli(
        capsys, "new", str(tmp_path / variant.name), *variant.flags(), "--dry-run"
    )
    assert (code, err) == (0, "")
    [(project, options)] = seen
    assert project == variant.project(tmp_path)
    assert options["dry_run"] is True


def test_a_variant_takes_newprojects_default_for_a_choice_it_does_not_declare():
    """What lets a new `scaffold new` option need no change in scaffold/variants.py."""
    assert list(Variant("v", "lenet").options()) == answer_names()
    declares_only_its_model = SimpleNamespace(name="v", model="lenet")
    assert Variant.options(declares_only_its_model) == {
        **NewProject(dest=Path("v")).answers(),
        "model": "lenet",
    }


def test_every_module_the_project_has_is_refused_as_its_name(tmp_path):
    everything = NewProject(dest=tmp_path / "p", ddp=True, vscode=True, hooks=True)
    files = create_project(everything, git=False, dry_run=True).files
    modules = {
        Path(name).parts[0].removesuffix(".py")
        for name in files
        if name.endswith(".py") and not Path(name).parts[0].startswith(".")
    }
    assert {"train", "model", "tests"} <= modules
    for module in sorted(modules):
        assert shadowing(module) == f"the project's own {module} module", module
