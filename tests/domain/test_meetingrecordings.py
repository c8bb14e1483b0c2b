"""
Meeting recordings without sockets or wall time: the daemon's domain on a
task.Clock and the memory store, with a fake media engine that writes a
real (small) WebM where the engine would write its Matroska file.
"""

from __future__ import annotations

import os
import stat

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import FakeClient, make_domain, make_user
from tests.mediasamples import webm
from wecompany.domain.meetingrecordings import FAILED, RECOVERED, recording_meeting
from wecompany.errors import Conflict, Forbidden, MeetingEnded, MeetingNotFound, NotFound, Unavailable

OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\n"
SAMPLE = webm(seconds=1.0)


class RecordingEngine:
    """
    An IMediaEngine whose calls succeed at once; a recording's file gets
    ``SAMPLE`` when it starts (as a real one grows while it records) and
    ``stop_recording`` reports the tracks of ``self.tracks``.
    """

    def __init__(self):
        self.calls = []
        self.recordings = {}  # recording id -> path
        self.tracks = []  # what stop_recording says the file holds
        self.fail = {}  # name -> exception
        self.write = SAMPLE

    def _maybe_fail(self, name):
        if name in self.fail:
            return fail(self.fail[name])
        return None

    def open_peer(self, room, peer_id, offer_sdp):
        self.calls.append(("open_peer", room, peer_id))
        return succeed(f"answer {peer_id}")

    def add_candidate(self, peer_id, candidate):
        return succeed(None)

    def renegotiate(self, peer_id, streams):
        return succeed("v=0 offer")

    def apply_answer(self, peer_id, answer_sdp):
        return succeed(None)

    def request_keyframe(self, peer_id):
        return succeed(None)

    def close_peer(self, peer_id):
        self.calls.append(("close_peer", peer_id))
        return succeed(None)

    def start_recording(self, room, recording_id, path):
        self.calls.append(("start_recording", room, recording_id, path))
        failed = self._maybe_fail("start_recording")
        if failed is not None:
            return failed
        with open(path, "wb") as fh:
            fh.write(self.write)
        self.recordings[recording_id] = path
        return succeed(None)

    def stop_recording(self, recording_id):
        self.calls.append(("stop_recording", recording_id))
        failed = self._maybe_fail("stop_recording")
        if failed is not None:
            return failed
        path = self.recordings.pop(recording_id)
        return succeed({"duration": 1.0, "size": os.path.getsize(path), "tracks": list(self.tracks)})

    def stats(self):
        return succeed({})


def run(test, coroutine):
    return test.successResultOf(Deferred.fromCoroutine(coroutine))


def failure_of(test, coroutine, *errors):
    return test.failureResultOf(Deferred.fromCoroutine(coroutine), *errors).value


class RecordingTestCase(SynchronousTestCase):
    def setUp(self):
        self.engine = RecordingEngine()
        self.domain = d = make_domain(self, media_engine=self.engine)
        self.recordings = d.recordings
        self.users = {name: self.successResultOf(d.store.get_user(make_user(d, name)))
                      for name in ("alice", "bob", "carol", "mallory")}
        meeting, _ = run(self, d.meetings.create(self.users["alice"], title="standup",
                                                  settings={"enable_recording": True}))
        self.meeting_id = meeting.id
        self.clients = {}
        for name in ("alice", "bob", "carol"):
            self.join(name)
        run(self, d.meetings.set_role(self.users["alice"], self.meeting_id, self.users["carol"].id, "moderator"))
        self.peers = {}

    def join(self, name):
        d, user = self.domain, self.users[name]
        meeting, _ = run(self, d.meetings.join(user, self.meeting_id))
        client = FakeClient(str(user.id), name, kind="ws")
        run(self, d.rooms.admit(user.id, self.meeting_id, client))
        d.rooms.join(client, meeting, user, f"web_{name}")
        self.clients[name] = client
        self.room_id = meeting.room_id

    def publish(self, name):
        """An SFU peer of ``name``'s that publishes audio and video -> its peer id."""
        sfu = self.domain.sfu
        opened = self.successResultOf(sfu.answer(self.room_id, self.users[name].id, OFFER))
        peer = opened["peer_id"]
        sfu.connection_state(peer, "connected")
        sfu.track_added(peer, f"{name}-audio", "audio")
        sfu.track_added(peer, f"{name}-video", "video")
        self.peers[name] = peer
        return peer

    def start(self, name="alice", title=None):
        return run(self, self.recordings.start(self.users[name], self.meeting_id, title))

    def told(self, name):
        return [e.payload for e in self.clients[name].take() if e.kind == "recording"]


class StartTests(RecordingTestCase):
    def test_host_or_moderator_only_and_nothing_said_to_strangers(self):
        self.publish("bob")
        error = failure_of(self, self.recordings.start(self.users["bob"], self.meeting_id), Forbidden)
        self.assertIn("host or a moderator", error.message)
        failure_of(self, self.recordings.start(self.users["mallory"], self.meeting_id), MeetingNotFound)
        recording = self.start("carol")  # a moderator
        self.assertEqual(recording.started_by, self.users["carol"].id)

    def test_only_when_the_meeting_enables_recording(self):
        self.publish("bob")
        run(self, self.domain.meetings.update(self.users["alice"], self.meeting_id,
                                              {"settings": {"enable_recording": False}}))
        error = failure_of(self, self.recordings.start(self.users["alice"], self.meeting_id), Forbidden)
        self.assertIn("enable_recording", error.message)
        self.assertEqual([c for c in self.engine.calls if c[0] == "start_recording"], [])

    def test_no_sfu_room_yet(self):
        error = failure_of(self, self.recordings.start(self.users["alice"], self.meeting_id), Conflict)
        self.assertEqual(error.message, "nobody is sending media in this meeting yet")

    def test_ended_meeting(self):
        self.publish("bob")
        run(self, self.domain.meetings.end(self.users["alice"], self.meeting_id))
        failure_of(self, self.recordings.start(self.users["alice"], self.meeting_id), MeetingEnded)

    def test_one_at_a_time(self):
        self.publish("bob")
        self.start()
        error = failure_of(self, self.recordings.start(self.users["carol"], self.meeting_id), Conflict)
        self.assertIn("already being recorded", error.message)

    def test_writes_a_private_file_and_tells_the_room(self):
        self.publish("bob")
        for name in self.clients:
            self.clients[name].take()
        recording = self.start(title="weekly")
        (_, room, recording_id, path), = [c for c in self.engine.calls if c[0] == "start_recording"]
        self.assertEqual((room, recording_id), (self.room_id, recording.recording_id))
        directory = os.path.join(self.domain.config.data_dir, "spool", "recordings")
        self.assertEqual(os.path.dirname(path), os.path.abspath(directory))
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        self.assertEqual(recording_meeting(recording_id), self.meeting_id)
        for name in ("alice", "bob", "carol"):
            (payload,) = self.told(name)
            self.assertEqual((payload["action"], payload["recording_id"], payload["started_by"], payload["title"]),
                             ("started", recording_id, self.users["alice"].id, "weekly"))

    def test_an_engine_that_cannot_start_leaves_nothing(self):
        self.publish("bob")
        self.engine.fail["start_recording"] = Unavailable("worker gone")
        failure_of(self, self.recordings.start(self.users["alice"], self.meeting_id), Unavailable)
        self.assertEqual(self.recordings.active, {})
        directory = self.recordings.directory
        self.assertEqual(os.listdir(directory), [])
        del self.engine.fail["start_recording"]
        self.start()  # the meeting is free to record again

    def test_without_an_sfu(self):
        domain = make_domain(self)
        user = self.successResultOf(domain.store.get_user(make_user(domain, "zed")))
        meeting, _ = run(self, domain.meetings.create(user, title="x", settings={"enable_recording": True}))
        failure_of(self, domain.recordings.start(user, meeting.id), Unavailable)


class StopTests(RecordingTestCase):
    def test_stop_makes_a_media_item_shared_with_the_publishers(self):
        bob = self.publish("bob")
        recording = self.start(title="weekly")
        carol = self.publish("carol")  # joins while it records
        self.engine.tracks = [{"peer_id": bob, "track_id": "bob-video", "kind": "video"},
                              {"peer_id": carol, "track_id": "carol-audio", "kind": "audio"}]
        self.domain.clock.advance(30)
        for name in self.clients:
            self.clients[name].take()
        stopped = run(self, self.recordings.stop(self.users["carol"], self.meeting_id))
        self.assertIs(stopped, recording)
        self.assertEqual(stopped.status, "completed")
        self.assertEqual(stopped.participants, tuple(sorted(self.users[n].id for n in ("alice", "bob", "carol"))))
        item = self.successResultOf(self.domain.store.get_media(stopped.media_id))
        self.assertEqual((item.uploader_id, item.meeting_id, item.file_type, item.filename, item.size,
                          item.duration_ms),
                         (self.users["alice"].id, self.meeting_id, "recording", "weekly.mkv", len(SAMPLE), 1000))
        self.assertEqual(item.created_at, self.domain.clock.seconds())
        for name in ("bob", "carol"):
            self.assertTrue(self.successResultOf(self.domain.store.media_shared_with(item.id, self.users[name].id)))
        stored = self.successResultOf(self.domain.storage.read(item.storage_key, 0, len(SAMPLE) + 1))
        self.assertEqual(stored, SAMPLE)
        self.assertEqual(os.listdir(self.recordings.directory), [])  # moved into the storage, sidecar gone
        (payload,) = self.told("bob")
        self.assertEqual((payload["action"], payload["media_id"], payload["by_user_id"]),
                         ("stopped", item.id, self.users["carol"].id))
        # Read back from the item, as after a restart.
        self.recordings._finished.clear()
        total, (listed,) = run(self, self.recordings.for_meeting(self.users["bob"], self.meeting_id, 0, 10))
        self.assertEqual(total, 1)
        self.assertEqual((listed.recording_id, listed.status, listed.title, listed.media_id, listed.duration,
                          listed.participants, listed.started_at),
                         (recording.recording_id, "completed", "weekly", item.id, 1.0, stopped.participants,
                          item.created_at - 1.0))
        # And deletable by the host through the media store.
        run(self, self.domain.media.delete(self.users["alice"].id, item.id))
        self.assertEqual(run(self, self.recordings.for_meeting(self.users["bob"], self.meeting_id, 0, 10))[0], 0)

    def test_only_the_publishers_whose_tracks_it_holds(self):
        self.publish("bob")
        self.publish("carol")
        self.start()
        self.engine.tracks = [{"peer_id": self.peers["bob"], "track_id": "bob-video", "kind": "video"}]
        stopped = run(self, self.recordings.stop(self.users["alice"], self.meeting_id))
        self.assertEqual(stopped.participants, tuple(sorted((self.users["alice"].id, self.users["bob"].id))))
        self.assertFalse(self.successResultOf(
            self.domain.store.media_shared_with(stopped.media_id, self.users["carol"].id)))

    def test_stop_by_recording_id_and_permissions(self):
        self.publish("bob")
        recording = self.start()
        failure_of(self, self.recordings.stop(self.users["bob"], self.meeting_id), Forbidden)
        failure_of(self, self.recordings.stop(self.users["mallory"], recording_id=recording.recording_id),
                   MeetingNotFound)
        failure_of(self, self.recordings.stop(self.users["alice"], recording_id="1-nope"), NotFound)
        stopped = run(self, self.recordings.stop(self.users["alice"], recording_id=recording.recording_id))
        self.assertEqual(stopped.status, "completed")
        error = failure_of(self, self.recordings.stop(self.users["alice"], self.meeting_id), Conflict)
        self.assertIn("not being recorded", error.message)
        found = run(self, self.recordings.find(self.users["bob"], recording.recording_id))
        self.assertEqual(found.media_id, stopped.media_id)
        failure_of(self, self.recordings.find(self.users["mallory"], recording.recording_id), NotFound)

    def test_the_meeting_ending_stops_it_before_the_sfu_closes_the_peers(self):
        self.publish("bob")
        recording = self.start()
        run(self, self.domain.meetings.end(self.users["alice"], self.meeting_id))
        names = [c[0] for c in self.engine.calls]
        self.assertLess(names.index("stop_recording"), names.index("close_peer"))
        self.assertEqual(self.recordings.active, {})
        self.assertEqual(recording.status, "completed")
        self.assertIsNotNone(self.successResultOf(self.domain.store.get_media(recording.media_id)))

    def test_a_deleted_meeting_leaves_the_recording_to_its_starter(self):
        self.publish("bob")
        recording = self.start()
        run(self, self.domain.meetings.delete(self.users["alice"], self.meeting_id))
        item = self.successResultOf(self.domain.store.get_media(recording.media_id))
        self.assertEqual((item.uploader_id, item.meeting_id), (self.users["alice"].id, None))
        self.recordings._finished.clear()
        found = run(self, self.recordings.find(self.users["alice"], recording.recording_id))
        self.assertEqual(found.media_id, item.id)

    def test_engine_failure_keeps_what_was_written(self):
        self.publish("bob")
        recording = self.start()
        self.domain.sfu.recording_failed(recording.recording_id, "disk full")
        self.assertEqual((recording.status, recording.failure), (FAILED, "disk full"))
        item = self.successResultOf(self.domain.store.get_media(recording.media_id))
        self.assertEqual(item.size, len(SAMPLE))
        self.assertTrue(item.storage_key.endswith("-failed.mkv"))
        self.assertEqual([p["action"] for p in self.told("bob")], ["started", "failed"])
        self.recordings._finished.clear()
        _, (listed,) = run(self, self.recordings.for_meeting(self.users["bob"], self.meeting_id, 0, 10))
        self.assertEqual(listed.status, FAILED)

    def test_an_empty_failure_leaves_no_item(self):
        self.engine.write = b""
        self.publish("bob")
        recording = self.start()
        self.engine.fail["stop_recording"] = Unavailable("worker gone")
        self.domain.sfu.recording_failed(recording.recording_id, "worker gone")
        self.assertEqual((recording.status, recording.media_id, recording.size), (FAILED, None, 0))
        self.assertEqual(os.listdir(self.recordings.directory), [])
        total, (listed,) = run(self, self.recordings.for_meeting(self.users["bob"], self.meeting_id, 0, 10))
        self.assertEqual(listed.status, FAILED)

    def test_the_daemon_stopping_finishes_every_recording(self):
        self.publish("bob")
        recording = self.start()
        self.successResultOf(self.recordings.stop_all())
        self.assertEqual(recording.status, "completed")
        self.assertIsNotNone(recording.media_id)
        failure_of(self, self.recordings.start(self.users["alice"], self.meeting_id), Unavailable)


class RecoveryTests(RecordingTestCase):
    def test_leftovers_readable_become_recovered_items_the_rest_are_removed(self):
        self.publish("bob")
        crashed = self.start(title="crashed")
        # The daemon is killed: nothing stops the recording; the file is cut short.
        path = self.engine.recordings[crashed.recording_id]
        with open(path, "r+b") as fh:
            fh.truncate(len(SAMPLE) * 2 // 3)
        directory = self.recordings.directory
        with open(os.path.join(directory, f"{self.meeting_id}-0badf11e.mkv"), "wb") as fh:
            fh.write(b"not media at all")
        with open(os.path.join(directory, f"{self.meeting_id}-0badf11e.json"), "w") as fh:
            fh.write('{"started_by": %d, "meeting_id": %d}' % (self.users["alice"].id, self.meeting_id))
        with open(os.path.join(directory, f"{self.meeting_id}-00000000.json"), "w") as fh:
            fh.write("{}")  # a sidecar whose file never came
        # The next run (the same store and data directory).
        domain = make_domain(self, media_engine=RecordingEngine(), store=self.domain.store)
        recordings = domain.recordings
        recordings.directory = directory  # (make_domain gives each domain its own data directory)
        recovered = run(self, recordings.recover())
        self.assertEqual([r.recording_id for r in recovered], [crashed.recording_id])
        (r,) = recovered
        self.assertEqual(r.status, RECOVERED)
        self.assertGreater(r.duration, 0.2)
        self.assertLess(r.duration, 1.0)
        item = self.successResultOf(domain.store.get_media(r.media_id))
        self.assertEqual((item.uploader_id, item.meeting_id, item.file_type, item.filename),
                         (self.users["alice"].id, self.meeting_id, "recording", "crashed.mkv"))
        self.assertTrue(self.successResultOf(domain.store.media_shared_with(item.id, self.users["bob"].id)))
        self.assertEqual(os.listdir(directory), [])
        _, (listed,) = run(self, recordings.for_meeting(self.users["bob"], self.meeting_id, 0, 10))
        self.assertEqual((listed.recording_id, listed.status), (crashed.recording_id, RECOVERED))

    def test_late_tracks_left_in_pieces_are_merged_into_the_recovered_item(self):
        import av

        self.publish("bob")
        crashed = self.start(title="in pieces")
        path = self.engine.recordings[crashed.recording_id]
        # The worker wrote the first tracks to the recording and a late one to a piece of its own
        # (it merges them at stop, which a crash never reached).
        with open(path, "wb") as fh:
            fh.write(webm(seconds=1.0, video=False))
        with open(path + ".part-1.mkv", "wb") as fh:
            fh.write(webm(seconds=1.0, audio=False))
        directory = self.recordings.directory
        with open(os.path.join(directory, "0-dead.mkv.part-1.mkv"), "wb") as fh:
            fh.write(b"a piece whose recording is gone")
        domain = make_domain(self, media_engine=RecordingEngine(), store=self.domain.store)
        recordings = domain.recordings
        recordings.directory = directory
        (recovered,) = run(self, recordings.recover())
        item = self.successResultOf(domain.store.get_media(recovered.media_id))
        stored = self.successResultOf(domain.storage.read(item.storage_key, 0, item.size))
        with av.open(__import__("io").BytesIO(stored)) as container:
            self.assertEqual(sorted(s.type for s in container.streams), ["audio", "video"])
        self.assertEqual(os.listdir(directory), [])
