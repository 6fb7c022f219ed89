"""The `umbrafs` command group.  Each package's commands live in their own module."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click


from cli import exitcodes
from cli.state import State, default_home
from wire import clock


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="State directory (keys, mount records, logs). Default: $UMBRAFS_HOME or $XDG_STATE_HOME/umbrafs.",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
# The tests and the anomaly evaluation replay weeks in minutes on a shared simulated clock
# (wire/clock.py).  An explicit, hidden option rather than an environment variable, so that
# nothing a user's environment carries can move the ledger's timestamps.
@click.option("--clock-file", type=click.Path(dir_okay=False, path_type=Path), default=None, hidden=True)
@click.pass_context
def umbrafs(ctx: click.Context, home: Path | None, verbose: int, clock_file: Path | None) -> None:
    """umbrafs: an encrypted, shareable drive."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if clock_file is not None:
        clock.use_clock_file(clock_file)
        logging.getLogger(__name__).info("simulated clock from %s", clock_file)
    ctx.obj = State(home or default_home())


def _register() -> None:
    from cli import (audit_cmds, daemon_cmds, identity_cmds, lock_cmds, mount_cmds, proxy_cmds, restore_cmds, share_cmds,
                     vault_cmds)

    for module in (vault_cmds, mount_cmds, daemon_cmds, audit_cmds, identity_cmds, proxy_cmds, share_cmds, lock_cmds,
                   restore_cmds):
        for command in module.COMMANDS:
            umbrafs.add_command(command)
    from cli import anomaly_cmds  # anomalies, policy

    for command in anomaly_cmds.COMMANDS:
        umbrafs.add_command(command)


_register()


def main() -> None:
    try:
        umbrafs.main(prog_name="umbrafs")
    except exitcodes.PROJECT_ERRORS as exc:
        click.echo(f"umbrafs: {exc}", err=True)
        sys.exit(exitcodes.for_error(exc))
    except KeyboardInterrupt:
        click.echo("umbrafs: interrupted", err=True)
        sys.exit(130)
