"""The config table written out for people: config.example.ini and docs/configuration.md.

Both are generated from config.py's ``OPTIONS`` (``make docs``, ``s3-uploader example-config``), and
tests/unit/test_docs.py checks the committed reference equals what the table generates. The table is
passed in, so this module does not import config (config imports it, for its ``render_*`` wrappers).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, Tuple

if TYPE_CHECKING:
    from .config import Option


def _sections(options: Sequence[Option]) -> Tuple[str, ...]:
    """The sections of ``options`` in the order they first appear."""
    return tuple(dict.fromkeys(o.section for o in options))


def render_example(options: Sequence[Option]) -> str:
    """The text of config.example.ini: every option of ``options`` with its help, default and an example."""
    lines = [
        "# s3-uploader configuration. Every key is listed with its default; uncomment to change.",
        "# Durations: seconds or 30s, 5m, 2h, 7d. Sizes: bytes or KB/MB/GB (10^3) and KiB/MiB/GiB (2^10).",
        "# Keys marked (restart) need a daemon restart; the rest apply live when this file is saved or on SIGHUP.",
        "# Credentials are never read from here: they come from the AWS chain (environment, profile, role).",
    ]
    for sec in _sections(options):
        lines += ["", f"[{sec}]"]
        for o in (o for o in options if o.section == sec):
            flags = [f for f in ("required" if o.required else "", "restart" if not o.reloadable else "") if f]
            lines.append(f"# {o.help}" + (f" ({', '.join(flags)})" if flags else ""))
            if o.required:
                lines.append(f"{o.key} = {o.example}")
            else:
                lines.append(f"#{o.key} = {o.default}")
                if o.example is not None:
                    lines.append(f"#   e.g. {o.key} = {o.example}")
    return "\n".join(lines) + "\n"


def render_reference(options: Sequence[Option]) -> str:
    """The text of docs/configuration.md: every option of ``options`` as Markdown, one table per section.

    Generated like config.example.ini (``make docs``); a test checks the committed file equals it.
    """
    def cell(text: str) -> str:  # a table cell: '|' would end it, '*' could start emphasis
        return text.replace("|", "\\|").replace("*", "\\*")

    def code(text: str) -> str:
        return f"`{text}`" if text else "(empty)"

    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from the config table (src/s3_uploader/config.py, OPTIONS) by `make docs`;",
        "     do not edit: change the table and regenerate. -->",
        "",
        "`config.ini` is INI. `s3-uploader example-config` prints `config.example.ini`, the same keys with "
        "their help, ready to edit. Durations are seconds or `30s`, `5m`, `2h`, `7d`; sizes are bytes or "
        "`KB`/`MB`/`GB` (10^3) and `KiB`/`MiB`/`GiB` (2^10). Relative paths are relative to the config file's "
        "folder. Credentials are never read from this file: they come from the AWS chain (environment, "
        "`profile`, `credentials_file`, instance or task role).",
        "",
        "**Live** keys apply when the file is saved or on SIGHUP (see [Hot reload](operations.md#hot-reload)); "
        "**restart** keys keep their running value until the daemon restarts. A bad value is an error naming "
        "the section, the key, the value and what was expected (exit 2). What the keys act on: "
        "[How it works](how-it-works.md), [Operations](operations.md).",
    ]
    for sec in _sections(options):
        lines += ["", f"## [{sec}]", "", "| key | default | expects | applies | what it does |",
                  "|---|---|---|---|---|"]
        for o in (o for o in options if o.section == sec):
            default = "required" if o.required else code(o.default)
            applies = "live" if o.reloadable else "restart"
            text = cell(o.help) + (f" Example: `{o.example}`." if o.example is not None else "")
            lines.append(f"| `{o.key}` | {default} | {cell(o.type.describe)} | {applies} | {text} |")
    return "\n".join(lines) + "\n"
