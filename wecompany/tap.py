"""
The twistd plugin's two halves: command-line :class:`Options` and
:func:`makeService`, the only composition root.

``twistd -n wecompany --port 8888`` parses :class:`Options`; its
``postOptions`` merges the command line, the environment and the config file
into a validated :class:`~wecompany.config.Config`, so a bad value is a usage
error before anything listens.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import attrs
from twisted.python import usage

from wecompany.config import CONFIG_ENV, Config, ConfigError, option_label, parse_bool


def _describe(field: attrs.Attribute) -> str:
    default = field.default
    if default is None:
        return field.metadata["doc"]
    shown = f"{default:g}" if isinstance(default, float) else default
    return f"{field.metadata['doc']} [default: {shown}]"


def _is_flag(field: attrs.Attribute) -> bool:
    return field.metadata["parse"] is parse_bool


class Options(usage.Options):
    """
    ``twistd wecompany`` options: one per :class:`Config` field, plus ``--config``.

    Every parameter defaults to ``None`` ("not given") so that the environment
    and the config file can supply it; a boolean option ``x`` has the flags
    ``--x`` and ``--no-x`` for the same reason. After parsing, ``self.config``
    holds the validated :class:`Config`.

    :param environ: the environment to read ``WECOMPANY_*`` from; defaults to
        :data:`os.environ`. Tests pass a dict instead of patching.
    """

    synopsis = "[options]"
    longdesc = (
        "Runs the WeCompany chat and call server. Each option may also be set by "
        "the environment variable WECOMPANY_<OPTION> (upper case, underscores) or "
        "in the [wecompany] section of the --config file; the command line wins, "
        "then the environment, then the file, then the default."
    )

    optParameters = [
        ["config", "c", None, f"INI file with a [wecompany] section (also {CONFIG_ENV})"],
    ] + [
        [option_label(field.name), None, None, _describe(field)]
        for field in attrs.fields(Config)
        if not _is_flag(field)
    ]

    optFlags = [
        flag
        for field in attrs.fields(Config)
        if _is_flag(field)
        for flag in (
            [option_label(field.name), None, _describe(field)],
            [f"no-{option_label(field.name)}", None, f"turn off --{option_label(field.name)}"],
        )
    ]

    environ: Mapping[str, str] = os.environ

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        if environ is not None:
            self.environ = environ

    def opt_version(self) -> None:
        """Print WeCompany's version and exit."""
        print(f"WeCompany {installed_version()}")
        sys.exit(0)

    def parseOptions(self, options=None) -> None:
        """
        Parse, and under twistd (``self.parent`` is its options) answer a
        usage error with the error itself, first: twistd would print its
        whole ``--help`` above it.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            if self.parent is None:
                raise
            exit_with_usage_error(error)

    def postOptions(self) -> None:
        cli = {}
        for field in attrs.fields(Config):
            label = option_label(field.name)
            if not _is_flag(field):
                cli[field.name] = self[label]
            elif self[label] and self[f"no-{label}"]:
                raise usage.UsageError(f"--{label} and --no-{label} contradict each other")
            elif self[label] or self[f"no-{label}"]:
                cli[field.name] = bool(self[label])
        from wecompany.storage import check_location
        try:
            self.config = Config.from_sources(cli, self.environ, self["config"])
            check_location(self.config.file_storage)
        except ConfigError as error:
            raise usage.UsageError(str(error)) from None
        if self.parent is not None:
            self._place_pid_file(self.parent)
            # --log-format and --log-level: twistd's --logger, writing where twistd would.
            from wecompany.logs import install_observer_factory
            install_observer_factory(self.parent, self.config.log_format, self.config.log_level)

    def _place_pid_file(self, twistd_options) -> None:
        """
        twistd writes ``twistd.pid`` in the working directory unless given
        ``--pidfile``: left at that default, there is none under ``--nodaemon``
        (a service manager or a terminal holds the process), and a daemon's is
        ``twistd.pid`` in the data directory. An explicit ``--pidfile``
        (``--pidfile=`` for none) is kept.
        """
        if twistd_options.get("pidfile") != DEFAULT_TWISTD_PIDFILE:
            return
        if twistd_options.get("nodaemon") or twistd_options.get("debug"):
            twistd_options["pidfile"] = ""
        else:
            twistd_options["pidfile"] = os.path.join(os.path.abspath(self.config.data_dir), "twistd.pid")


#: twistd's own default for --pidfile (twisted.scripts._twistd_unix.ServerOptions).
DEFAULT_TWISTD_PIDFILE = "twistd.pid"


def installed_version() -> str:
    """WeCompany's version from the installed package's metadata (the source tree's if it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wecompany")
    except PackageNotFoundError:
        from wecompany import __version__
        return __version__


def exit_with_usage_error(error, stream=None) -> None:
    """The error on one line, a hint, and exit status 1 (as twistd's own usage errors)."""
    stream = stream if stream is not None else sys.stderr
    stream.write(f"wecompany: {error}\nRun 'twistd wecompany --help' for the options.\n")
    stream.flush()
    sys.exit(1)


def makeService(options, reactor=None):
    """
    Build the daemon's service tree from parsed :class:`Options`.

    The only place that falls back to the global reactor, and the only place
    that knows how the pieces fit: one store, one session registry, one call
    service and one chat service shared by every transport.
    """
    if reactor is None:
        from twisted.internet import reactor
    # What the daemon writes is private whatever umask it was started with
    # (its own files are made 0600/0700 explicitly; this covers the log file
    # twistd opens next). twistd applies an explicit --umask after this.
    os.umask(0o077)
    # Autobahn schedules its timers (pings, handshake timeouts) through
    # txaio's loop: the daemon's reactor, set the way txaio documents.
    import txaio
    txaio.config.loop = reactor
    from wecompany.service import report_start_failures
    # A start-up failure (a port in use) ends twistd with one line, not a traceback.
    report_start_failures()
    try:
        return build_service(options.config, reactor)
    except usage.UsageError as error:  # found while building (a driver missing, a cluster without a secret)
        exit_with_usage_error(error)


DEFAULT_BACKLOG = 1024


def with_backlog(endpoint: str) -> str:
    """
    Give a TCP or TLS endpoint a listen backlog of 1024 unless it names one:
    Twisted's default of 50 overflows when many clients connect at once, and
    each overflow costs a client a one-second SYN retry (bench/connections.py).
    """
    kind = endpoint.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "ssl") and "backlog=" not in endpoint:
        return f"{endpoint}:backlog={DEFAULT_BACKLOG}"
    return endpoint


def build_store(config: Config, reactor, user_caches=(), meeting_caches=(), query_timings=None):
    """
    The store ``--database`` names: SQLite (the default) or PostgreSQL, not
    yet started, telling ``user_caches`` and ``meeting_caches`` of its writes
    (and ``query_timings`` how long each call took).
    """
    caches = {"user_caches": user_caches, "meeting_caches": meeting_caches, "query_timings": query_timings}
    if config.database_kind == "postgresql":
        try:
            from wecompany.store.postgres import PostgreSQLStore
        except ImportError as error:
            raise usage.UsageError(f"--database: a PostgreSQL database needs the driver ({error}): "
                                   "pip install 'wecompany[postgresql]'") from None
        try:
            return PostgreSQLStore(config.database, reactor=reactor, **caches)
        except ValueError as error:  # its message hides the password
            raise usage.UsageError(f"--database: {error}") from None
    from wecompany.store.sqlite import SQLiteStore
    return SQLiteStore(config.sqlite_path, reactor=reactor, **caches)


def check_startup(config: Config) -> None:
    """
    What start-up refuses beyond :class:`Config`'s own checks (``wecompany
    check-config`` asks the same); :func:`build_store` adds the database's.

    :raises usage.UsageError: saying what to change.
    """
    if config.redis is not None and config.jwt_secret is None:
        # A secret generated in each node's data directory would make every
        # token good on one node only.
        raise usage.UsageError("--redis: the nodes of a cluster must sign tokens with one secret: give each "
                               "the same --jwt-secret (WECOMPANY_JWT_SECRET or jwt-secret in the config file "
                               "keep it out of the process list)")


def build_service(config: Config, reactor):
    """:func:`makeService` for an already validated :class:`Config` (tests call this)."""
    from functools import partial

    from twisted.internet.endpoints import serverFromString
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool

    from wecompany.ai.processes import EngineProcesses
    from wecompany.ai.service import AIEngines
    from wecompany.api.app import RestAPI
    from wecompany.api.metrics import DB_BUCKETS, GC_BUCKETS, Metrics
    from wecompany.domain.stats import Timings
    from wecompany.api.ai import ai_body_limits
    from wecompany.api.users import MAX_AVATAR
    from wecompany.config import load_or_create_secret
    from wecompany.connections import AddressCounter, CappedFactory
    from wecompany.domain.core import build_domain
    from wecompany.domain.meetingpages import MeetingPages
    from wecompany.domain.usercache import UserCache
    from wecompany.privatefs import exposure_warnings, make_private_dir, storage_errors_unavailable
    from wecompany.proxies import TrustedProxies
    from wecompany.proxyprotocol import ProxyHeaderFactory, proxy_protocol_port
    from wecompany.runtime import CollectorTuning
    from wecompany.service import Listener, WeCompanyService
    from wecompany.signaling.protocol import SignalingFactory
    from wecompany.tcp.protocol import WeCompanyFactory
    from wecompany.web.channel import TimeoutPolicy
    from wecompany.web.site import TOO_MANY_CONNECTIONS, free_bytes, make_metrics_site, make_site

    check_startup(config)
    # The store tells the caches of its writes; in a cluster it also tells
    # the relays, which tell the other nodes' caches (wecompany.mirror.caches).
    user_cache, meeting_pages = UserCache(reactor), MeetingPages(reactor)
    user_caches, meeting_caches = [user_cache], [meeting_pages]
    redis_link = None
    if config.redis is not None:
        import attrs

        from wecompany.mirror.caches import relays
        from wecompany.mirror.cluster import all_channel, new_node_id
        from wecompany.mirror.redis import RedisLink  # no Redis code runs without --redis

        if config.node_id is None:  # known before the store is made: its relays name it
            config = attrs.evolve(config, node_id=new_node_id())
        redis_link = RedisLink(reactor, config.redis)
        user_relay, meeting_relay = relays(redis_link, all_channel(config.redis_prefix), config.node_id)
        user_caches.append(user_relay)
        meeting_caches.append(meeting_relay)
    if config.web_root is not None and not os.path.isfile(os.path.join(config.web_root, "index.html")):
        raise usage.UsageError(f"--web-root: {config.web_root} has no index.html (give the directory of a "
                               "built web client)")
    store = build_store(config, reactor, user_caches=user_caches, meeting_caches=meeting_caches,
                        query_timings=Timings(DB_BUCKETS))
    make_private_dir(config.data_dir)
    secret = config.jwt_secret or load_or_create_secret(config.data_dir)
    sqlite_path = config.sqlite_path  # None for PostgreSQL
    database_files = [sqlite_path, f"{sqlite_path}-wal", f"{sqlite_path}-shm"] if sqlite_path else []

    # Hashing is CPU-bound: one thread per core is enough. Disk work for
    # files gets its own small pool so a burst of logins cannot starve it.
    hash_pool = ThreadPool(minthreads=0, maxthreads=max(2, os.cpu_count() or 2), name="wecompany-hash")
    disk_pool = ThreadPool(minthreads=0, maxthreads=4, name="wecompany-disk")
    # Media jobs: each thread only waits on its job's child process.
    media_pool = ThreadPool(minthreads=0, maxthreads=config.media_workers, name="wecompany-media")
    run_disk = storage_errors_unavailable(partial(deferToThreadPool, reactor, disk_pool))
    # AI engines hold the GIL for seconds: they run in worker processes
    # (--ai-workers), each loading the models once, never in the reactor's
    # process (wecompany.ai.processes, bench/ai_gil.py).
    ai_engines = AIEngines()
    ai_processes = EngineProcesses(reactor, ai_engines.local(), config.ai_workers)
    ai_http = None
    if config.kserve_url is not None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool
        ai_http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=True)))

    node_links = None
    if config.node_link is not None:
        from twisted.internet.endpoints import clientFromString

        from wecompany.mirror.medialink import NodeLinks, link_key

        node_links = NodeLinks(reactor, config.node_id, link_key(secret, config.redis_prefix),
                               connect=partial(clientFromString, reactor), address=config.node_link_address,
                               max_frame=config.max_frame)
    media_engine = None
    if config.sfu:
        # The SFU's media runs in worker processes (aiortc on asyncio), never
        # in the reactor's: forwarding stays off the TCP, REST and signaling
        # paths and spreads over the cores (wecompany.sfu, docs/sfu.rst).
        from wecompany.sfu.engine import WorkerEngine

        media_engine = WorkerEngine(reactor, workers=config.sfu_workers, host_addresses=config.sfu_addresses or (),
                                    public_address=config.sfu_public_address, udp_ports=config.sfu_udp_ports,
                                    lazy=True)  # started by the first room: no media, no workers
    domain = build_domain(config, reactor, store, secret=secret,
                          run_hash=partial(deferToThreadPool, reactor, hash_pool), run_disk=run_disk,
                          user_cache=user_cache, meeting_pages=meeting_pages, redis_link=redis_link,
                          node_links=node_links, run_media=partial(deferToThreadPool, reactor, media_pool),
                          run_ai=ai_processes, ai_http=ai_http, ai_engines=ai_engines, media_engine=media_engine)
    # The service starts the processes (each loads the models); this records what they loaded.
    reactor.callWhenRunning(domain.ai.warm_up)
    cluster_node = None
    if redis_link is not None:
        from wecompany.mirror.cluster import ClusterNode
        from wecompany.mirror.caches import MEETINGS, USERS
        cluster_node = ClusterNode(domain.cluster, domain.chat, domain.calls, domain.rooms, domain.files,
                                   caches={USERS: user_cache, MEETINGS: meeting_pages}, sfu=domain.sfu_router)

    trusted = TrustedProxies.of(config.trusted_proxies)
    tcp_factory = WeCompanyFactory(
        domain, max_frame=config.max_frame, login_timeout=config.login_timeout, idle_timeout=config.idle_timeout,
        allow_anonymous=config.allow_anonymous,
        connection_cap=AddressCounter(config.max_connections_per_address, exempt=trusted))
    signaling = SignalingFactory(domain, reactor=reactor, max_message=config.ws_max_message,
                                 message_rate=config.ws_rate, message_burst=config.ws_burst,
                                 ping_interval=config.ws_ping_interval, ping_timeout=config.ws_ping_timeout,
                                 allowed_origins=config.allowed_origins, fast_path=config.ws_fast_path,
                                 trusted_proxies=trusted)
    gc_pauses = Timings(GC_BUCKETS)  # fed by the collector's callback (CollectorTuning)
    metrics = Metrics(domain, tcp_factory, gc_pauses=gc_pauses)
    # The console's live dashboard (GET /api/v1/admin/live), its REST latencies read from the metrics.
    from wecompany.api.live import timings_reader
    from wecompany.domain.dashboard import Dashboard, DashboardFeed
    live_feed = DashboardFeed(Dashboard(domain, latency=timings_reader(metrics.latency)), reactor)
    site = make_site(domain.store, domain, reactor=reactor, api=RestAPI(domain, live_feed=live_feed),
                     metrics=metrics, serve_metrics=config.metrics_port is None, signaling=signaling,
                     free_space=partial(run_disk, free_bytes, config.data_dir),
                     body_limits=((b"/api/v1/users/upload-avatar", MAX_AVATAR + (64 << 10)),
                                  *ai_body_limits(config.ai_max_audio_bytes)),
                     timeouts=TimeoutPolicy(header_timeout=config.http_header_timeout,
                                            body_timeout=config.http_body_timeout,
                                            idle_timeout=config.http_idle_timeout),
                     trusted_proxies=trusted, console=True, web_root=config.web_root, run_disk=run_disk)
    http_factory = CappedFactory(site, AddressCounter(config.max_connections_per_address, exempt=trusted),
                                 TOO_MANY_CONNECTIONS)

    def listener(name: str, option: str, description: str, factory) -> Listener:
        given = description
        # haproxy:ENDPOINT with --trusted-proxies: the PROXY protocol from those peers only.
        inner = proxy_protocol_port(description)
        if inner is not None and trusted:
            description, factory = inner, ProxyHeaderFactory(factory, trusted, reactor)
        return Listener(name, serverFromString(reactor, with_backlog(description)), factory,
                        description=given, option=option)

    listeners = [listener("tcp", "port", config.port, tcp_factory),
                 listener("http", "http-port", config.http_port, http_factory)]
    if config.metrics_port is not None:  # /metrics apart from the clients (and off the HTTP site)
        listeners.append(Listener("metrics", serverFromString(reactor, config.metrics_port),
                                  make_metrics_site(metrics, reactor), description=config.metrics_port,
                                  option="metrics-port"))
    if node_links is not None:
        listeners.append(Listener("node-link", serverFromString(reactor, config.node_link), node_links.factory(),
                                  on_listening=node_links.listening, description=config.node_link,
                                  option="node-link"))

    control_listener, control_warning = control_socket(config, reactor, domain)
    if control_listener is not None:
        listeners.append(control_listener)

    stored = getattr(domain.storage, "root", None)  # a directory, unless the files are in S3
    warnings = exposure_warnings([config.data_dir, *database_files,
                                  os.path.join(config.data_dir, "jwt.secret"), domain.files.spool_dir,
                                  *([os.path.join(stored, "media"), os.path.join(stored, "avatars")] if stored
                                    else []),
                                  *([config.record_calls] if config.record_calls else [])])
    if control_warning is not None:
        warnings.append(control_warning)
    for option, description in (("port", config.port), ("http-port", config.http_port)):
        if proxy_protocol_port(description) is not None and not trusted:
            warnings.append(f"--{option} {description}: a PROXY header is believed from any peer; name the "
                            "proxies with --trusted-proxies, or keep the port reachable from them alone")
    if config.redis is not None and config.file_storage is None:
        warnings.append(f"--redis without --file-storage: avatars and files sent to this node stay in "
                        f"{config.data_dir}, out of the other nodes' reach; give every node the same "
                        f"--file-storage (file:/shared/path or s3://bucket/prefix)")
    if config.redis is not None and config.database_kind == "sqlite":
        warnings.append(f"--redis with SQLite ({sqlite_path}): the nodes of a cluster must share one database; "
                        "unless every node opens this same file, give them --database postgresql://...")
    return WeCompanyService(store=domain.store, listeners=listeners, tcp_factory=tcp_factory, calls=domain.calls,
                            threadpools=(hash_pool, disk_pool, media_pool), process_pools=(ai_processes,),
                            recorder=domain.recorder, reactor=reactor,
                            handle_signals=True, startup_warnings=warnings, signaling=signaling,
                            collector=CollectorTuning(pauses=gc_pauses), files=domain.files, cluster_node=cluster_node,
                            media_jobs=domain.processing.jobs,
                            sfu=(media_engine, domain.sfu) if domain.sfu is not None else None,
                            recordings=domain.recordings, chat=domain.chat)


def control_socket(config: Config, reactor, domain):
    """
    The control socket's :class:`~wecompany.service.Listener` for ``wecompany
    user ...`` (:mod:`wecompany.control`), or a warning saying why there is none.
    """
    from twisted.internet.endpoints import UNIXServerEndpoint

    from wecompany.control import ControlFactory, socket_path, usable_socket_path
    from wecompany.domain.useradmin import UserAdministration
    from wecompany.service import Listener

    path = socket_path(config.data_dir)
    if not usable_socket_path(path):
        return None, (f"no control socket: {path} is too long for a Unix socket; 'wecompany user ...' "
                      "then changes the database directly: this daemon's cached accounts catch up within "
                      "a minute, but the sessions it holds are not signed out (use a shorter --data-dir)")
    # wantPID: a lock file beside it, so a stale socket (a killed daemon's) is replaced.
    endpoint = UNIXServerEndpoint(reactor, path, mode=0o600, wantPID=True)
    return Listener("control", endpoint, ControlFactory(UserAdministration(domain)),
                    description=f"unix:{path}", option="the control socket"), None
