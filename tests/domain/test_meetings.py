"""MeetingService rules that are easiest to see without HTTP in the way."""

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import make_domain, make_user
from wecompany.domain.meetings import CLOCK_SKEW, SETTINGS_DEFAULTS, MeetingService, check_settings
from wecompany.errors import Forbidden, InvalidInput, MeetingEnded, MeetingFull, WrongMeetingPassword


def run(coro):
    return Deferred.fromCoroutine(coro)


class MeetingServiceCase(SynchronousTestCase):
    def setUp(self):
        self.d = make_domain(self)
        self.store = self.d.store
        self.service = MeetingService(self.d.store, self.d.hasher, self.d.clock, self.d.guard)
        self.host = self.user("hostuser")

    def user(self, name: str):
        return self.store.get_user(make_user(self.d, name)).result

    def ok(self, coro):
        return self.successResultOf(run(coro))

    def fails(self, coro, error):
        return self.failureResultOf(run(coro), error).value

    def create(self, user=None, **fields):
        meeting, _ = self.ok(self.service.create(user or self.host, title=fields.pop("title", "Sync"), **fields))
        return meeting

    def rows(self, meeting_id: int) -> dict:
        return {p.user_id: p for p in self.store.list_participants(meeting_id).result}


class SettingsTests(MeetingServiceCase):
    def test_check_settings(self):
        self.assertEqual(check_settings({"enable_ai": True}), {"enable_ai": True})
        self.assertIn("bogus", self._message(lambda: check_settings({"bogus": True})))
        self.assertIn("settings.enable_chat", self._message(lambda: check_settings({"enable_chat": 1})))

    def _message(self, f) -> str:
        with self.assertRaises(InvalidInput) as cm:
            f()
        return cm.exception.message

    def test_create_merges_with_defaults(self):
        meeting = self.create(settings={"mute_on_join": True})
        self.assertEqual(meeting.settings, {**SETTINGS_DEFAULTS, "mute_on_join": True})
        self.assertEqual(self.create().settings, SETTINGS_DEFAULTS)

    def test_update_merges_with_stored_settings(self):
        meeting = self.create(settings={"mute_on_join": True, "enable_video": False})
        updated = self.ok(self.service.update(self.host, meeting.id, {"settings": {"enable_ai": True}}))
        self.assertEqual(updated.settings, {**SETTINGS_DEFAULTS, "mute_on_join": True, "enable_video": False,
                                            "enable_ai": True})
        updated = self.ok(self.service.update(self.host, meeting.id, {"settings": {"mute_on_join": False}}))
        self.assertEqual((updated.settings["mute_on_join"], updated.settings["enable_ai"]), (False, True))
        self.assertEqual(self.store.get_meeting(meeting.id).result.settings, updated.settings)

    def test_update_rejects_bad_settings_and_writes_nothing(self):
        meeting = self.create()
        for settings in ({"bogus": True}, {"enable_chat": "yes"}):
            self.fails(self.service.update(self.host, meeting.id, {"settings": settings, "title": "changed"}),
                       InvalidInput)
        stored = self.store.get_meeting(meeting.id).result
        self.assertEqual((stored.title, stored.settings), ("Sync", SETTINGS_DEFAULTS))


class CapacityTests(MeetingServiceCase):
    def test_cannot_go_below_current_count(self):
        meeting = self.create(max_participants=10)
        joined, left, invited = self.user("joined"), self.user("leaver"), self.user("invited")
        self.ok(self.service.join(joined, meeting.id))
        self.ok(self.service.join(left, meeting.id))
        self.ok(self.service.leave(left, meeting.id))
        self.ok(self.service.add_participant(self.host, meeting.id, invited.id))
        # host + joined + left + invited: every row counts.
        error = self.fails(self.service.update(self.host, meeting.id, {"max_participants": 3}), InvalidInput)
        self.assertIn("4 current participants", error.message)
        self.assertEqual(self.store.get_meeting(meeting.id).result.max_participants, 10)
        updated = self.ok(self.service.update(self.host, meeting.id, {"max_participants": 4}))
        self.assertEqual(updated.max_participants, 4)
        self.fails(self.service.join(self.user("fifth"), meeting.id), MeetingFull)

    def test_host_counts(self):
        meeting = self.create(max_participants=1)
        self.fails(self.service.join(self.user("guest"), meeting.id), MeetingFull)
        self.fails(self.service.add_participant(self.host, meeting.id, self.user("other").id), MeetingFull)
        self.assertEqual(list(self.rows(meeting.id)), [self.host.id])
        self.assertEqual(self.store.get_meeting(meeting.id).result.status, "scheduled")


class StartTimeTests(MeetingServiceCase):
    def test_clock_skew_boundary(self):
        now = self.d.clock.seconds()
        self.assertEqual(self.create(start_time=now - CLOCK_SKEW).start_time, now - CLOCK_SKEW)
        self.fails(self.service.create(self.host, title="t", start_time=now - CLOCK_SKEW - 1), InvalidInput)
        self.assertEqual(CLOCK_SKEW, 300.0)


class PasswordTests(MeetingServiceCase):
    def test_password_is_hashed_never_stored_plain(self):
        meeting = self.create(password="open sesame")
        stored = self.store.get_meeting(meeting.id).result
        self.assertTrue(stored.password_hash.startswith("$argon2id$"), stored.password_hash)
        self.assertNotIn("open sesame", stored.password_hash)
        self.assertTrue(self.ok(self.d.hasher.verify(stored.password_hash, "open sesame")))
        self.assertNotIn("open sesame", repr(stored))
        # Changing it hashes the new one (with a fresh salt).
        updated = self.ok(self.service.update(self.host, meeting.id, {"password": "open sesame"}))
        self.assertNotEqual(updated.password_hash, stored.password_hash)
        self.assertNotIn("open sesame", updated.password_hash)
        self.assertTrue(self.ok(self.d.hasher.verify(updated.password_hash, "open sesame")))

    def test_join_checks_the_hash(self):
        meeting = self.create(password="open sesame")
        guest = self.user("guest")
        self.fails(self.service.join(guest, meeting.id, "open"), WrongMeetingPassword)
        self.fails(self.service.join(guest, meeting.id, None), WrongMeetingPassword)
        _, participant = self.ok(self.service.join(guest, meeting.id, "open sesame"))
        self.assertEqual((participant.user_id, participant.status), (guest.id, "joined"))

    def test_no_password(self):
        for password in (None, ""):
            meeting = self.create(password=password)
            self.assertIsNone(self.store.get_meeting(meeting.id).result.password_hash)
        self.fails(self.service.create(self.host, title="t", password="p" * 65), InvalidInput)


class PermissionTests(MeetingServiceCase):
    def test_moderator_cannot_demote_moderator_but_host_can(self):
        meeting = self.create()
        mod1, mod2 = self.user("moder1"), self.user("moder2")
        for mod in (mod1, mod2):
            self.ok(self.service.add_participant(self.host, meeting.id, mod.id, "moderator"))
        self.fails(self.service.set_role(mod1, meeting.id, mod2.id, "participant"), Forbidden)
        self.assertEqual(self.rows(meeting.id)[mod2.id].role, "moderator")
        self.assertEqual(self.ok(self.service.set_role(self.host, meeting.id, mod2.id, "participant")).role,
                         "participant")

    def test_set_role_rejects_host_role(self):
        meeting = self.create()
        guest = self.user("guest")
        self.ok(self.service.join(guest, meeting.id))
        self.fails(self.service.set_role(self.host, meeting.id, guest.id, "host"), InvalidInput)
        self.fails(self.service.set_role(self.host, meeting.id, self.host.id, "participant"), Forbidden)


class UserDeletedTests(MeetingServiceCase):
    def test_hosted_meetings_cancelled_or_ended_and_seats_left(self):
        guest, other_host = self.user("guest"), self.user("otherhost")
        scheduled = self.create()
        ongoing = self.create()
        self.ok(self.service.join(guest, ongoing.id))
        ended = self.create()
        self.ok(self.service.end(self.host, ended.id))
        ended_at = self.store.get_meeting(ended.id).result.ended_at
        theirs = self.create(other_host)
        self.ok(self.service.join(self.host, theirs.id))
        invited_to = self.create(other_host)
        self.ok(self.service.add_participant(other_host, invited_to.id, self.host.id))
        self.d.clock.advance(60)
        now = self.d.clock.seconds()

        self.ok(self.service.user_deleted(self.host.id))

        def meeting(m):
            return self.store.get_meeting(m.id).result

        self.assertEqual((meeting(scheduled).status, meeting(scheduled).ended_at), ("cancelled", now))
        self.assertEqual((meeting(ongoing).status, meeting(ongoing).ended_at), ("ended", now))
        self.assertEqual((self.rows(ongoing.id)[guest.id].status, self.rows(ongoing.id)[guest.id].left_at),
                         ("left", now))
        self.assertEqual((meeting(ended).status, meeting(ended).ended_at), ("ended", ended_at))
        self.assertEqual(meeting(theirs).status, "ongoing")
        self.assertEqual((self.rows(theirs.id)[self.host.id].status, self.rows(theirs.id)[self.host.id].left_at),
                         ("left", now))
        self.assertEqual(meeting(invited_to).status, "scheduled")
        # An invitation of a deleted account is void: the seat is left too.
        self.assertEqual((self.rows(invited_to.id)[self.host.id].status,
                          self.rows(invited_to.id)[self.host.id].left_at), ("left", now))
        self.fails(self.service.join(guest, scheduled.id), MeetingEnded)

    def test_idempotent(self):
        meeting = self.create()
        self.ok(self.service.user_deleted(self.host.id))
        self.ok(self.service.user_deleted(self.host.id))
        self.assertEqual(self.store.get_meeting(meeting.id).result.status, "cancelled")

    def test_more_than_one_page_of_hosted_meetings(self):
        # BUG: user_deleted advances its offset by the page length while the
        # meetings it just closed drop out of the (scheduled, ongoing) query,
        # so the meetings after the first page of 100 are skipped.
        ids = [self.create(title=f"m{i}").id for i in range(101)]
        self.ok(self.service.user_deleted(self.host.id))
        still_open = [mid for mid in ids if self.store.get_meeting(mid).result.status != "cancelled"]
        self.assertEqual(still_open, [])


class RecordingListener:
    def __init__(self):
        self.events = []

    def meeting_changed(self, meeting):
        self.events.append(("changed", meeting.id, meeting.status))

    def meeting_deleted(self, meeting_id):
        self.events.append(("deleted", meeting_id))

    def participant_left(self, meeting_id, user_id, reason):
        self.events.append(("left", meeting_id, user_id, reason))


class BrokenListener:
    def __getattr__(self, name):
        def fail(*args):
            raise RuntimeError("listener bug")
        return fail


class ListenerTests(MeetingServiceCase):
    """What is stored through the service is told to its listeners (the signaling rooms)."""

    def setUp(self):
        super().setUp()
        self.listener = RecordingListener()
        self.service.listeners.append(self.listener)

    def take(self):
        events, self.listener.events = self.listener.events, []
        return events

    def test_changes_are_told_after_they_are_stored(self):
        guest = self.user("guest")
        meeting = self.create()
        self.assertEqual(self.take(), [])  # a new meeting has no room yet
        self.ok(self.service.join(guest, meeting.id))  # scheduled -> ongoing
        self.assertEqual(self.take(), [("changed", meeting.id, "ongoing")])
        self.ok(self.service.join(guest, meeting.id))  # already ongoing: nothing changed
        self.assertEqual(self.take(), [])
        self.ok(self.service.update(self.host, meeting.id, {"settings": {"enable_chat": False}}))
        self.assertEqual(self.take(), [("changed", meeting.id, "ongoing")])
        self.ok(self.service.leave(guest, meeting.id))
        self.assertEqual(self.take(), [("left", meeting.id, guest.id, "left")])
        self.ok(self.service.join(guest, meeting.id))
        self.ok(self.service.remove_participant(self.host, meeting.id, guest.id))
        self.assertEqual(self.take(), [("left", meeting.id, guest.id, "removed")])
        self.ok(self.service.end(self.host, meeting.id))
        self.assertEqual(self.take(), [("changed", meeting.id, "ended")])
        other = self.create()
        self.ok(self.service.start(self.host, other.id))
        self.ok(self.service.delete(self.host, other.id))
        self.assertEqual(self.take(), [("changed", other.id, "ongoing"), ("deleted", other.id)])

    def test_refused_changes_are_not_told(self):
        guest = self.user("guest")
        meeting = self.create()
        self.fails(self.service.update(guest, meeting.id, {"title": "mine now"}), Forbidden)
        self.fails(self.service.end(guest, meeting.id), Forbidden)
        self.assertEqual(self.take(), [])

    def test_account_deletion_tells_every_meeting(self):
        guest = self.user("guest")
        hosted = self.create()
        self.ok(self.service.join(guest, hosted.id))
        theirs = self.create(guest)
        self.ok(self.service.join(self.host, theirs.id))
        self.take()
        self.ok(self.service.user_deleted(self.host.id))
        self.assertEqual(sorted(self.take()), sorted([("changed", hosted.id, "ended"),
                                                      ("left", theirs.id, self.host.id, "left")]))

    def test_a_failing_listener_does_not_undo_the_change(self):
        self.service.listeners.insert(0, BrokenListener())
        meeting = self.create()
        ended = self.ok(self.service.end(self.host, meeting.id))
        self.assertEqual(ended.status, "ended")
        self.assertEqual(self.take(), [("changed", meeting.id, "ended")])  # the next listener still hears
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
