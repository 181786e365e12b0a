"""The docs stay true: the generated reference matches the config table, links lead somewhere, and
every test the guarantees name exists."""
import re
from pathlib import Path

from s3_uploader.config import OPTIONS, render_reference

ROOT = Path(__file__).resolve().parents[2]  # tests/unit/ -> the project
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def test_the_committed_configuration_reference_is_the_one_the_config_table_generates():
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == render_reference(), "regenerate: make docs"


def test_the_configuration_reference_lists_every_key_with_its_default():
    text = render_reference()
    for o in OPTIONS:
        assert f"| `{o.key}` | " in text, o.key
        assert f"## [{o.section}]" in text, o.section


def test_every_relative_link_in_the_readme_and_the_docs_leads_to_a_file_that_exists():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_every_test_the_guarantees_name_exists():
    text = (ROOT / "docs" / "guarantees.md").read_text()
    named = re.findall(r"`tests/([\w/]+\.py)(?:::(\w+))?`", text)
    assert len(named) > 50, "docs/guarantees.md names the tests behind its lines"
    missing = [f"{path}::{name}" for path, name in named
               if not (ROOT / "tests" / path).is_file()
               or (name and not re.search(rf"^\s*((async )?def {name}\(|{name} = )", (ROOT / "tests" / path).read_text(), re.M))]
    assert not missing, missing
