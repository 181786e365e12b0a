"""The docs stay true: the generated configuration reference matches the config table."""
from pathlib import Path

from s3_uploader.config import OPTIONS, render_reference

ROOT = Path(__file__).parent.parent


def test_the_committed_configuration_reference_is_the_one_the_config_table_generates():
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == render_reference(), "regenerate: make docs"


def test_the_configuration_reference_lists_every_key_with_its_default():
    text = render_reference()
    for o in OPTIONS:
        assert f"| `{o.key}` | " in text, o.key
        assert f"## [{o.section}]" in text, o.section

