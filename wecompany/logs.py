"""
The daemon's log output: ``--log-format text|json`` and ``--log-level``.

twistd builds its log observer itself, from its own options, and lets a
``--logger`` (the name of a factory of observers) take precedence over that.
:func:`install_observer_factory` sets that option on twistd's parsed options
(the plugin's ``Options.postOptions`` does it, before twistd imports the
name and starts logging) to a :class:`ObserverFactory`, which writes where twistd would have written
-- ``--logfile`` (rotated on ``SIGUSR1``, as twistd does), standard output
under ``-n`` without one, or ``--syslog`` -- in the chosen format, and drops
the events below the chosen level. An explicit ``--logger`` is left alone.

The JSON format is one object per line, for a log shipper:
``{"time": "2026-01-02T03:04:05.678+00:00", "level": "info", "namespace":
"wecompany.access", "message": "...", ...}`` and the event's structured
fields (``log.info("... {user}", user=...)`` gives ``"user"``), each a JSON
value (or its ``str()``). Nothing more is logged than the text format
shows: the fields are the ones the message is made of, and code never
passes a token or a password to the log.
"""

from __future__ import annotations

import json
import signal
import sys
from datetime import datetime, timezone

import attrs
from twisted.logger import (FileLogObserver, FilteringLogObserver, ILogFilterPredicate, LegacyLogObserverWrapper,
                            LogLevel, LogLevelFilterPredicate, PredicateResult, formatEvent, textFileLogObserver)
from zope.interface import implementer

#: --log-level's names, least severe first.
LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error,
          "critical": LogLevel.critical}

# Keys of Twisted's legacy (twisted.python.log) events, already in "message"
# or the level: not repeated as fields.
_LEGACY_KEYS = frozenset(("message", "format", "isError", "system", "time", "why", "failure", "printed"))
_MAX_FIELD = 2000  # characters of one field's str(), for objects that are not JSON values


def _plain(value):
    text = str(value)
    return text if len(text) <= _MAX_FIELD else text[:_MAX_FIELD] + "..."


def event_as_json(event: dict, skip=()) -> str:
    """One event as one line of JSON (without the newline); ``skip``: fields left out."""
    when = event.get("log_time")
    level = event.get("log_level")
    record = {
        "time": (datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds")
                 if when is not None else None),
        "level": level.name if level is not None else None,
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_KEYS or key in record or key in skip:
            continue
        record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    try:
        return json.dumps(record, default=_plain, ensure_ascii=False)
    except (TypeError, ValueError):  # a circular value, keys that are not strings
        return json.dumps({key: _plain(value) if key not in ("time", "level") else value
                           for key, value in record.items()}, ensure_ascii=False)


#: The access log's namespace: its events are batches of requests (wecompany.web.site.AccessLog).
ACCESS_NAMESPACE = "wecompany.access"


def event_as_json_lines(event: dict) -> str:
    """
    The JSON lines of an event, each ending in a newline: one, or for an
    access-log batch, one per request (its line of text as ``message``, its
    fields beside it).
    """
    requests = event.get("requests")
    if event.get("log_namespace") == ACCESS_NAMESPACE and isinstance(requests, list):
        lines = str(event.get("lines", "")).split("\n")
        out = []
        for i, fields in enumerate(requests):
            single = {key: value for key, value in event.items() if key.startswith("log_")}
            single.update(fields)
            single.update(log_format="{line}", line=lines[i] if i < len(lines) else "")
            out.append(event_as_json(single, skip=("line",)))
        return "".join(line + "\n" for line in out)
    return event_as_json(event) + "\n"


def json_file_observer(out) -> FileLogObserver:
    """An observer writing each event to ``out`` as JSON, one object a line."""
    return FileLogObserver(out, event_as_json_lines)


#: What twisted.internet.protocol.Factory logs at each start and stop of a noisy factory.
FACTORY_NOISE = frozenset(("Starting factory {factory!r}", "Stopping factory {factory!r}"))


@implementer(ILogFilterPredicate)
def quiet_factories(event) -> PredicateResult:
    """
    Drop the factory start/stop lines. Our factories are quiet already
    (``noisy = False``); this is for the ones libraries make for us, out of
    reach of their public API: the HTTP connection pool's, one per connection.
    """
    return PredicateResult.no if event.get("log_format") in FACTORY_NOISE else PredicateResult.maybe


def filtered(observer, level: str) -> FilteringLogObserver:
    """``observer`` given only the events at ``level`` (a --log-level name) or more severe, without factory noise."""
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(defaultLogLevel=LEVELS[level]),
                                           quiet_factories])


def observer_for(out, log_format: str, level: str):
    """The observer writing to ``out`` in ``log_format`` (text or json), from ``level`` up."""
    base = json_file_observer(out) if log_format == "json" else textFileLogObserver(out)
    return filtered(base, level)


@attrs.frozen
class ObserverFactory:
    """
    twistd's ``--logger``: called once, when twistd starts logging, it opens
    the destination twistd's own options name and returns the observer.
    """

    log_format: str
    level: str
    logfile: str | None = None
    nodaemon: bool = False
    syslog: bool = False
    syslog_prefix: str = "twisted"

    def __call__(self):
        if self.syslog:
            from twisted.python.syslog import SyslogObserver
            # Syslog has its own format (text); the level applies.
            return filtered(LegacyLogObserverWrapper(SyslogObserver(self.syslog_prefix).emit), self.level)
        return observer_for(self.open(), self.log_format, self.level)

    def open(self):
        """The file twistd would log to (twisted.scripts._twistd_unix.UnixAppLogger's choice)."""
        if self.logfile == "-":
            if not self.nodaemon:
                sys.exit("Daemons cannot log to stdout, exiting!")
            return sys.stdout
        if self.nodaemon and not self.logfile:
            return sys.stdout
        from twisted.python.logfile import LogFile
        log_file = LogFile.fromFullPath(self.logfile or "twistd.log")
        if not signal.getsignal(signal.SIGUSR1):  # as twistd: SIGUSR1 rotates, unless taken

            def rotate(signum, frame):
                from twisted.internet import reactor
                reactor.callFromThread(log_file.rotate)

            signal.signal(signal.SIGUSR1, rotate)
        return log_file


# twistd takes --logger as a name (it imports it after the plugin's options
# are parsed), so the factory the options chose waits here, for the one twistd
# run of this process: the only module-level state, set by the composition root's
# options alone.
_chosen: ObserverFactory | None = None

#: The --logger name install_observer_factory gives twistd.
OBSERVER_NAME = "wecompany.logs.twistd_observer"


def twistd_observer():
    """twistd's ``--logger``: the observer :func:`install_observer_factory` chose (text, info, by default)."""
    return (_chosen or ObserverFactory("text", "info"))()


def chosen_factory() -> ObserverFactory | None:
    """The :class:`ObserverFactory` twistd will call, if the options installed one."""
    return _chosen


def install_observer_factory(twistd_options, log_format: str, level: str) -> None:
    """
    Make twistd log through an :class:`ObserverFactory` (as ``--logger``) unless
    it was given a ``--logger`` of its own.
    """
    global _chosen
    if twistd_options.get("logger"):
        return
    _chosen = ObserverFactory(
        log_format, level, logfile=twistd_options.get("logfile") or None,
        nodaemon=bool(twistd_options.get("nodaemon") or twistd_options.get("debug")),
        syslog=bool(twistd_options.get("syslog")), syslog_prefix=twistd_options.get("prefix") or "twisted")
    twistd_options["logger"] = OBSERVER_NAME
