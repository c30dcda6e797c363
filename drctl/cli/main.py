"""`drctl`: the operator's command line."""

from __future__ import annotations

import click

from drctl.cli.backup_cmd import COMMANDS as BACKUP_COMMANDS
from drctl.cli.cluster_cmd import COMMANDS as CLUSTER_COMMANDS
from drctl.cli.context import target_options
from drctl.cli.drill_cmd import drill_group
from drctl.cli.entrypoint_cmd import entrypoint_group
from drctl.cli.lab_cmd import lab_group
from drctl.cli.policy_cmd import policy_group
from drctl.cli.runbook_cmd import runbook_group
from drctl.cli.sites_cmd import COMMANDS as SITE_COMMANDS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pgdr")
@target_options
def cli(**_target: object) -> None:
    """pgdr: disaster recovery for PostgreSQL across datacenters."""


cli.add_command(lab_group)
cli.add_command(policy_group)
cli.add_command(runbook_group)
cli.add_command(drill_group)
cli.add_command(entrypoint_group)
for _command in [*CLUSTER_COMMANDS, *SITE_COMMANDS, *BACKUP_COMMANDS]:
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="drctl")


if __name__ == "__main__":
    main()
