"""
``wecompany``: the operators' command line.

``wecompany [DAEMON OPTIONS] COMMAND [COMMAND OPTIONS]``. The daemon
options come first, with the daemon's names (``--config FILE``,
``--data-dir DIR``, ``--database URL`` ...), and are read exactly as the
daemon reads them (:class:`wecompany.tap.Options`: the command line, then
``WECOMPANY_*``, then the config file), so the command finds the daemon's
database, data directory and ports. The commands:

``user add|list|show|passwd|ban|unban|delete``
    accounts (:mod:`wecompany.cli.users`): through the running daemon's
    control socket when it answers, else on the database directly.
``check-config``
    the configuration as start-up checks it, then the ports, the database
    and Redis (:mod:`wecompany.cli.check`).
``backup DEST``, ``migrate``
    the database (:mod:`wecompany.cli.database`).
``send``, ``online``, ``call-test``
    a client of the TCP port, for trying a server (:mod:`wecompany.cli.client`).

A usage error prints the error first and exits 2; a command that fails
exits 1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from twisted.python import usage

from wecompany import tap
from wecompany.cli.check import CheckConfigOptions
from wecompany.cli.common import CommandFailed
from wecompany.cli.client import CallTestOptions, OnlineOptions, SendOptions
from wecompany.cli.database import BackupOptions, MigrateOptions
from wecompany.cli.users import UserOptions

USAGE_ERROR = 2


class WeCompanyOptions(tap.Options):
    """The daemon's options (:class:`wecompany.tap.Options`), then a command."""

    synopsis = "[daemon options] COMMAND [options]"
    longdesc = ("The operators' command line of WeCompany. The daemon options (before the command) "
                "are the daemon's, read from the command line, WECOMPANY_* and the --config file as "
                "the daemon reads them. 'wecompany COMMAND --help' describes a command.")

    subCommands = [
        ["user", None, UserOptions, "Add, list, show, ban, unban or delete accounts, or set a password"],
        ["check-config", None, CheckConfigOptions, "Check the configuration, the ports, the database and Redis"],
        ["backup", None, BackupOptions, "Copy the database to a file, consistently, while the daemon runs"],
        ["migrate", None, MigrateOptions, "Apply the database schema of this release"],
        ["send", None, SendOptions, "Send a text message over the TCP port"],
        ["online", None, OnlineOptions, "List who is online, over the TCP port"],
        ["call-test", None, CallTestOptions, "Place a call between two accounts and measure the media round trip"],
    ]

    def getSynopsis(self) -> str:
        return f"Usage: wecompany {self.synopsis}"

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a command is required: " + ", ".join(c[0] for c in self.subCommands))
        super().postOptions()


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> None:
    """The console script: parse, run the command, exit with its status."""
    sys.exit(run(sys.argv[1:] if argv is None else argv, os.environ if environ is None else environ))


def run(argv: list[str], environ: Mapping[str, str]) -> int:
    """Parse ``argv`` and run its command -> the exit status."""
    options = WeCompanyOptions(environ=environ)
    try:
        options.parseOptions(argv)
    except usage.UsageError as error:
        sys.stderr.write(f"wecompany: {error}\nRun 'wecompany --help' for the commands and options.\n")
        return USAGE_ERROR
    command, name = options.subOptions, [options.subCommand]
    while getattr(command, "subOptions", None) is not None:  # user ban: the command that failed
        name.append(command.subCommand)
        command = command.subOptions
    try:
        return options.subOptions.run(options.config, environ) or 0
    except CommandFailed as error:
        sys.stderr.write(f"wecompany {' '.join(name)}: {error}\n")
        return 1
    except usage.UsageError as error:  # found while building (a driver missing, a cluster without a secret)
        sys.stderr.write(f"wecompany: {error}\n")
        return USAGE_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("wecompany: interrupted\n")
        return 130
