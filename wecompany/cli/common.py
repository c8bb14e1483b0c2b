"""What the commands share: their failure, and how a password is read."""

from __future__ import annotations

import getpass
import sys

from twisted.python import usage


class CommandFailed(Exception):
    """A command could not do its work; the message is the one line printed (exit status 1)."""


def read_passwords(count: int, from_stdin: bool, prompts: list[str], confirm: bool = False, stdin=None) -> list[str]:
    """
    ``count`` passwords: one line each from standard input (``--password-stdin``,
    for scripts: a password never belongs on a command line, where every
    local user can read it), or from prompts without echo, each asked twice
    when ``confirm``.
    """
    stdin = stdin if stdin is not None else sys.stdin
    passwords = []
    for prompt in prompts[:count]:
        if from_stdin:
            line = stdin.readline()
            if not line:
                raise CommandFailed(f"--password-stdin: expected {count} line(s) on standard input, got "
                                    f"{len(passwords)}")
            password = line.rstrip("\r\n")
        else:
            try:
                password = getpass.getpass(f"{prompt}: ")
                if confirm and getpass.getpass(f"{prompt} (again): ") != password:
                    raise CommandFailed("the passwords do not match")
            except EOFError:
                raise CommandFailed("no password given (use --password-stdin to read it from standard input)") \
                    from None
        if not password:
            raise CommandFailed("the password is empty")
        passwords.append(password)
    return passwords


def run_on_reactor(work):
    """
    ``await work(reactor)`` under :func:`twisted.internet.task.react` -> its
    result; what it raised is raised here (react itself only exits).
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    outcome = {}

    async def main(reactor):
        try:
            outcome["result"] = await work(reactor)
        except BaseException as error:
            outcome["error"] = error

    try:
        react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
    except SystemExit:
        pass
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


class Command(usage.Options):
    """
    A command's options, which may come before or after its arguments
    (``user add NAME --admin``), as with GNU getopt; ``--`` ends them.
    """

    def parseOptions(self, options=None) -> None:
        if options is None:
            options = sys.argv[1:]
        takes_value = {f"--{name[:-1]}" for name in self.longOpt if name.endswith("=")}
        takes_value |= {f"-{letter}" for letter, colon in zip(self.shortOpt, self.shortOpt[1:] + " ")
                        if letter != ":" and colon == ":"}
        flags, arguments = [], []
        tokens = iter(options)
        for token in tokens:
            if token == "--":
                arguments.extend(tokens)
                break
            if token.startswith("-") and token != "-":
                flags.append(token)
                if token in takes_value:
                    value = next(tokens, None)
                    if value is not None:
                        flags.append(value)
            else:
                arguments.append(token)
        super().parseOptions(flags + ["--", *arguments] if arguments else flags)
