"""Entry point of the ``litedur`` command."""

from __future__ import annotations

import click

import litedur


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(litedur.__version__, prog_name="litedur")
@click.option(
    "--db",
    "db",
    envvar="LITEDUR_DB",
    default="./litedur.db",
    show_default=True,
    help="Database file (else env LITEDUR_DB).",
)
@click.pass_context
def main(ctx: click.Context, db: str) -> None:
    """Look inside litedur durable workflows and streams."""
    ctx.obj = db
