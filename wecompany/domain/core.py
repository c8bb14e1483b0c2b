"""
The domain, built once: every service the transports share.

:func:`build_domain` makes it from the configuration, a clock, a store and
the runners of the thread pools; the composition root (``wecompany.tap``)
and the tests both call it, so what the tests exercise is wired exactly as
the daemon is (Synapse builds its ``HomeServer`` the same way for both). No
collaborator is set on a service after it is made: where two services need
each other, one is the other's listener.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import attrs

from wecompany.config import Config
from wecompany.domain.accounts import Accounts, Credentials
from wecompany.domain.calls import CallService
from wecompany.domain.chat import ChatService
from wecompany.domain.files import FileService, file_chunk_size
from wecompany.domain.ice import IceServers
from wecompany.domain.ids import IdGenerator
from wecompany.domain.lifecycle import AccountLifecycle
from wecompany.domain.media import MediaService
from wecompany.domain.processing import MediaProcessing
from wecompany.media.jobs import JobQueue
from wecompany.mirror.jobs import JobMirror
from wecompany.domain.meetingpages import MeetingPages
from wecompany.domain.meetingrecordings import MeetingRecordings, SfuRecordingEvents
from wecompany.domain.meetings import MeetingService
from wecompany.domain.passwords import PasswordHasher
from wecompany.domain.stats import Stats
from wecompany.domain.ratelimit import KeyedRateLimiter, LoginGuard
from wecompany.domain.recording import CallRecorder
from wecompany.domain.rooms import RoomService
from wecompany.domain.sessions import SessionRegistry, UserDirectory
from wecompany.domain.sfu import SfuService
from wecompany.domain.tokens import TokenIssuer
from wecompany.mirror.cluster import Cluster, LocalCluster
from wecompany.mirror.limits import SharedLimits
from wecompany.mirror.rooms import LocalRoomMirror, RoomMirror
from wecompany.mirror.sfu import SfuRouter, peer_id_maker
from wecompany.storage import IFileStorage, open_storage
from wecompany.domain.usercache import UserCache
from wecompany.ai.service import AIService, build_ai
from wecompany.times import rfc3339

Runner = Callable[..., object]  # f(callable, *args) -> Deferred, in a thread pool
#: Seconds a finished media job can still be read.
KEEP_FINISHED = 600.0


@attrs.frozen
class HashCost:
    """argon2id parameters (the daemon's; tests pass cheap ones: they check behaviour, not strength)."""

    time_cost: int = 3
    memory_cost: int = 65536
    parallelism: int = 4


@attrs.define(eq=False)
class Domain:
    """Every domain service of one daemon, wired together; see :func:`build_domain`."""

    config: Config
    clock: object
    store: object
    run_disk: Runner
    tokens: TokenIssuer
    hasher: PasswordHasher
    guard: LoginGuard
    auth_limiter: KeyedRateLimiter
    accounts: Accounts
    registry: SessionRegistry
    directory: UserDirectory
    calls: CallService
    files: FileService
    chat: ChatService
    ice: IceServers
    rooms: RoomService
    meetings: MeetingService
    lifecycle: AccountLifecycle
    credentials: Credentials
    recorder: CallRecorder | None
    #: The cluster (``--redis``), or ``LocalCluster`` for a daemon on its own.
    cluster: object
    #: Where avatars and transferred files are kept (``--file-storage``).
    storage: IFileStorage
    #: Users and profiles read through from the store (which invalidates it).
    user_cache: UserCache
    #: Pages of the meeting list, likewise.
    meeting_pages: MeetingPages
    #: The REST media API's items (uploads, processing results, TCP transfers).
    media: MediaService
    #: Processing jobs on those items (POST /media/process, /video/enhancement).
    processing: MediaProcessing
    #: The AI engines and their bounded pool (wecompany.ai.service).
    ai: AIService | None = None
    #: Counts the transports keep for the metrics (logins, frames, WebSocket messages).
    stats: Stats = attrs.field(factory=Stats)
    #: The meeting SFU (:class:`~wecompany.domain.sfu.SfuService`), or None (``--no-sfu``, or no media engine).
    sfu: object | None = None
    #: SFU connections opened per client address (each is a DTLS handshake in a media worker).
    sfu_limiter: KeyedRateLimiter | None = None
    #: In a cluster, what sends the SFU's calls to the node of their room
    #: (:class:`~wecompany.mirror.sfu.SfuRouter`); None otherwise.
    sfu_router: SfuRouter | None = None
    #: Meeting recordings (:class:`~wecompany.domain.meetingrecordings.MeetingRecordings`); without an SFU
    #: they cannot start, but those stored are listed.
    recordings: MeetingRecordings | None = None

    @property
    def sfu_routes(self):
        """What the SFU's HTTP routes call: the router in a cluster, else the SFU itself (None without one)."""
        return self.sfu_router if self.sfu_router is not None else self.sfu

    def live_counts(self) -> dict:
        """
        What is live now, for the whole cluster when clustered: users and
        sessions from the replica, the other nodes' calls as of their last
        heartbeat; a room with members on several nodes is counted once.
        """
        peers = self.cluster.peer_totals()
        return {"online_users": self.chat.online_count, "sessions": self.chat.session_count,
                "calls": self.calls.count + peers["calls"],
                "active_calls": self.calls.active_count + peers["active_calls"],
                "rooms": len(set(self.rooms.local_room_ids()) | peers["rooms"])}


def build_domain(config: Config, clock, store, *, secret: bytes, run_hash: Runner, run_disk: Runner,
                 user_cache: UserCache, meeting_pages: MeetingPages, hash_cost: HashCost = HashCost(),
                 mailer=None, id_node: int | None = None, redis_link=None, node_links=None,
                 s3_client_factory=None, run_media: Runner | None = None, run_job=None,
                 run_ai: Runner | None = None, ai_http=None, ai_engines=None, resolve_media=None,
                 media_engine=None) -> Domain:
    """
    The domain of one daemon.

    :param clock: ``IReactorTime`` (the reactor; a fake clock in tests).
    :param store: the started-or-not :class:`~wecompany.store.interface.IStore`.
    :param user_cache: the :class:`~wecompany.domain.usercache.UserCache`
        the store invalidates (one of its ``user_caches``).
    :param meeting_pages: the :class:`~wecompany.domain.meetingpages.MeetingPages`
        the store invalidates (one of its ``meeting_caches``).
    :param secret: the access tokens' signing secret.
    :param run_hash: runs argon2 work in its thread pool.
    :param run_disk: runs file work in its thread pool.
    :param mailer: sends password-reset mail (default: the log).
    :param id_node: the node number message ids carry (default: random).
    :param redis_link: a :class:`~wecompany.mirror.redis.RedisLink` (or a
        fake) when the daemon is clustered (``--redis``); None otherwise.
    :param node_links: the :class:`~wecompany.mirror.medialink.NodeLinks`
        for call media between nodes (``--node-link``), or None.
    :param run_media: runs media-processing jobs in their thread pool
        (each thread waits on a child process); default ``run_disk``.
    :param run_job: runs one job in such a thread (default: in a child
        process, :func:`wecompany.media.isolated.run_isolated`).
    :param s3_client_factory: makes the S3 client when ``--file-storage``
        is ``s3://`` (default: boto3's); tests pass a fake.
    :param run_ai: runs AI engines in their thread pool (default: ``run_disk``'s).
    :param ai_http: the treq client for the KServe models (``--kserve-url``).
    :param ai_engines: the local :class:`~wecompany.ai.service.AIEngines` (default: all of them).
    :param media_engine: the SFU's :class:`~wecompany.domain.interfaces.IMediaEngine`
        (the daemon's runs worker processes; tests pass a fake); without one,
        or with ``--no-sfu``, there is no SFU (its routes answer 503).
    :param resolve_media: ``async (user, media_id) -> bytes`` for AI inputs
        given as a media id (default: the media item's bytes, if the user may
        read it, within the AI audio limit).
    """
    # Caches of stored rows are only correct if the store tells them of every write.
    if user_cache not in store.user_caches or meeting_pages not in store.meeting_caches:
        raise ValueError("the store must invalidate the caches: make it with user_caches=[user_cache], "
                         "meeting_caches=[meeting_pages]")
    tokens = TokenIssuer(secret, clock, ttl=config.token_ttl)
    hasher = PasswordHasher(run_hash, time_cost=hash_cost.time_cost, memory_cost=hash_cost.memory_cost,
                            parallelism=hash_cost.parallelism)
    registry = SessionRegistry()
    if redis_link is None:
        cluster, shared = LocalCluster(), None
    else:
        cluster = Cluster(redis_link, registry, clock, node_id=config.node_id, prefix=config.redis_prefix,
                          node_timeout=config.node_timeout,
                          call_lock_ttl=config.ring_timeout + config.max_call + 60, links=node_links)
        shared = SharedLimits(cluster)  # so that spreading guesses over the nodes buys none
    # One set of limits for every transport: guesses at a password (per
    # address and per account or meeting), and auth requests per address.
    guard = LoginGuard(clock, per_address=config.login_failures_per_address,
                       per_target=config.login_failures_per_account, window=config.login_failure_window,
                       shared=shared)
    auth_limiter = KeyedRateLimiter(clock, config.auth_rate, config.auth_burst, shared=shared)
    accounts = Accounts(store, hasher, tokens, clock, guard, users=user_cache,
                        open_registration=config.registration == "open")
    directory = UserDirectory(store, registry)
    recorder = CallRecorder(config.record_calls, clock) if config.record_calls else None
    calls = CallService(clock, config.ring_timeout, config.max_call, recorder=recorder, cluster=cluster)
    storage = open_storage(config.file_storage, config.data_dir, run_disk, s3_client_factory=s3_client_factory)
    spool_dir = os.path.join(config.data_dir, "spool")
    media = MediaService(store, storage, run_disk, clock, spool_dir, max_upload=config.max_upload,
                         quota=config.media_quota)
    job_mirror = None
    if cluster.enabled:  # a client polls its job on any node
        job_mirror = JobMirror(cluster, clock, JobQueue.to_json, keep=KEEP_FINISHED, timeout=config.media_job_timeout)
    jobs = JobQueue(clock, run_media or run_disk, workers=config.media_workers, max_queued=config.media_queue,
                    keep_finished=KEEP_FINISHED, timeout=config.media_job_timeout,
                    on_change=job_mirror.changed if job_mirror is not None else None)
    processing = MediaProcessing(media, jobs, run_disk, os.path.join(spool_dir, "jobs"), mirror=job_mirror,
                                 **({"run_job": run_job} if run_job is not None else {}))
    files = FileService(store, directory, registry, storage, spool_dir, run_disk,
                        clock, chunk_size=file_chunk_size(config.max_frame),
                        node=cluster.node_id if cluster.enabled else None, media=media)
    chat = ChatService(store, registry, directory, calls, IdGenerator(clock, id_node), clock, listeners=[files],
                       cluster=cluster)
    ice = IceServers(clock, config.stun_servers, config.turn_servers or (), config.turn_secret, config.turn_ttl)
    room_mirror = RoomMirror(cluster) if cluster.enabled else LocalRoomMirror()
    rooms = RoomService(store, ice, clock, room_mirror, format_time=rfc3339)
    sfu = sfu_router = None
    # The recordings ask the SFU who publishes; the SFU tells them what the engine reports through these.
    recording_events = SfuRecordingEvents()
    if config.sfu and media_engine is not None:
        # An SFU peer is bound to its user's signaling session in the room (wecompany.domain.sfu). In a
        # cluster one node serves each room (wecompany.mirror.sfu): its peer ids name it, and it may have
        # no member of the room, whose meeting it then finds in the store.
        sfu = SfuService(media_engine, clock, members=rooms.sessions_in,
                         room_meeting=rooms.find_live_meeting if cluster.enabled else rooms.live_meeting_of,
                         format_time=rfc3339, recording_failed=recording_events.recording_failed,
                         track_published=recording_events.track_published,
                         make_peer_id=peer_id_maker(cluster.node_id) if cluster.enabled else None)
        if cluster.enabled:
            sfu_router = SfuRouter(sfu, cluster, rooms, store, clock)
    # The rooms (and the SFU's) here follow a meeting's REST changes, and the mirror tells the rooms on the
    # other nodes.
    listeners = [rooms, room_mirror] if cluster.enabled else [rooms]
    recordings = MeetingRecordings(media_engine if sfu is not None else None, sfu, store, media, rooms, clock,
                                   run_disk, os.path.join(spool_dir, "recordings"), events=recording_events)
    if sfu is not None:
        # The recordings hear of a meeting's end before the SFU closes its peers, so the engine
        # finishes the file while every track is still there.
        listeners += [recordings, sfu]
    meetings = MeetingService(store, hasher, clock, guard, listeners=listeners, pages=meeting_pages)
    lifecycle = AccountLifecycle(store, registry, clock, meetings, cluster)
    credentials = Credentials(accounts, lifecycle, mailer)
    if resolve_media is None:
        def resolve_media(user, media_id):
            return media.read_for_ai(user, media_id, config.ai_max_audio_bytes)
    ai = build_ai(config, clock, run_ai or run_disk, http=ai_http, engines=ai_engines, resolve_media=resolve_media,
                  anonymous_limiter=KeyedRateLimiter(clock, config.ai_anonymous_rate, config.ai_anonymous_burst,
                                                     shared=shared))
    return Domain(config=config, clock=clock, store=store, run_disk=run_disk, tokens=tokens, hasher=hasher,
                  guard=guard, auth_limiter=auth_limiter, accounts=accounts, registry=registry,
                  directory=directory, calls=calls, files=files, chat=chat, ice=ice, rooms=rooms,
                  meetings=meetings, lifecycle=lifecycle, credentials=credentials, recorder=recorder,
                  cluster=cluster, storage=storage, user_cache=user_cache, meeting_pages=meeting_pages, media=media,
                  processing=processing, ai=ai, sfu=sfu, sfu_router=sfu_router,
                  sfu_limiter=KeyedRateLimiter(clock, 5.0, 50.0, shared=shared), recordings=recordings)
