"""Entry point of the ``litedur`` command: global options and the one mapping from errors to exit codes."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

import litedur

from .commands import ALL, Failure
from .maintenance import COMMANDS as MAINTENANCE
from .schedules import SCHEDULE_COMMANDS
from .top import top

EPILOG = """\b
Examples:
  litedur workflows                      newest workflows first
  litedur show chat-1                    one workflow: steps, streams, events
  litedur tail chat-1 tokens             follow a stream live until it closes
  litedur send ask-1 '"yes"'             answer a workflow waiting in recv()
  litedur events ask-1                   the events a workflow has set
  litedur cancel chat-1                  stop it at its next step
  litedur resume chat-1                  continue a cancelled workflow
  litedur fork chat-1 --from-step 2      rerun from step 2 as a new workflow
  litedur queues                         queues: waiting, running, limits
  litedur schedules                      scheduled workflows and their next tick
  litedur workflows --queue jobs         the workflows of one queue
  litedur top                            live view: statuses, queues, streams
  litedur gc --older-than 7d             delete workflows that ended a week ago
  litedur backup copy.db                 a consistent copy of the live file
  litedur --db app.db tail chat-1 tokens --json
  LITEDUR_DB=app.db litedur info

\b
Exit status: 0 ok; 1 a tailed workflow failed, or the command was refused
(a send to an ended workflow, a resume of one not cancelled, a fork to a
taken id); 2 bad usage, no database file or no such workflow; 130
interrupted.

\b
Shell completion (bash; zsh and fish likewise):
  eval "$(_LITEDUR_COMPLETE=bash_source litedur)"
"""


class LitedurGroup(click.Group):
    """A click group that turns library errors into one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None
        except (litedur.DatabaseError, litedur.WorkflowNotFoundError) as exc:
            raise Failure(str(exc), 2) from None
        except litedur.LitedurError as exc:
            raise Failure(str(exc), 1) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except OSError as exc:
            if exc.errno == 32:  # EPIPE: the reader went away (``litedur tail ... | head``)
                raise
            raise Failure(f"{type(exc).__name__}: {exc}", 1) from None


@click.group(cls=LitedurGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(litedur.__version__, "-V", "--version", prog_name="litedur")
@click.option(
    "--db",
    "db",
    envvar="LITEDUR_DB",
    default="./litedur.db",
    show_default=True,
    metavar="PATH",
    type=click.Path(dir_okay=True),
    help="Database file (else env LITEDUR_DB).",
)
@click.option("-v", "--verbose", is_flag=True, help="Show the library's log (INFO and up) on stderr.")
@click.pass_context
def main(ctx: click.Context, db: str, verbose: bool) -> None:
    """Look inside and steer litedur durable workflows and their streams.

    Reads the SQLite file that litedur workflows and queues run in (send, cancel, resume and
    fork also write to it); never creates one.
    """
    ctx.obj = db
    if verbose:
        _log_to_stderr()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _log_to_stderr() -> None:
    """The ``litedur`` logger at INFO, one line per record on stderr (once per process)."""
    logger = logging.getLogger("litedur")
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


for command in [*ALL, *MAINTENANCE, top, *SCHEDULE_COMMANDS]:
    main.add_command(command)
