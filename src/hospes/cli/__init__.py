"""The ``hospes`` command line: a command table (click group) of subcommands."""

from __future__ import annotations

import sys

import click

from hospes.errors import HospesError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hospes")
def cli() -> None:
    """Hospes: run stock Linux kernels as Xen PV guests on KVM."""


def _register() -> None:
    from hospes.cli import daemon, image, run, xl

    run.register(cli)
    image.register(cli)
    xl.register(cli)
    daemon.register(cli)


def main() -> None:
    _register()
    try:
        cli.main(standalone_mode=True)
    except HospesError as e:
        click.echo(f"hospes: {e}", err=True)
        sys.exit(2)
