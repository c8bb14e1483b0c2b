// A minimal client of the SFU contract of the family's browser client
// (/work/shared/spec/sfu.md: connectSfu, the two polls, the track -> user
// mapping, leave), for tests/e2e/test_sfu_browser.py. No UI beyond a form and
// the video tiles; the state the test reads is window.sfuState, with
// window.sfuTiles(), window.sfuFramesDecoded() and window.sfuLeave().
"use strict";

(() => {
  const TYPES = { join: 4, leave: 5, error: 13, "room-info": 14 };
  const ICE_POLL_MS = 600;
  const OFFER_POLL_MS = 800;
  const SHORT_TIMEOUT_MS = 2500; // routes 2, 3, 4, 6
  const LONG_TIMEOUT_MS = 10000; // routes 1, 5 and the rest
  const RECONNECT_GAP_MS = 3000;

  const query = new URLSearchParams(location.search);
  // ?insertable=1: encodedInsertableStreams as the family's client: its sent H.264 frames carry an SEI
  // user-data NAL (the family's UUID, "wecompany:<username>"), and received ones are searched for it.
  const insertable = query.get("insertable") === "1";
  // ?media=later: no camera nor microphone until window.sfuStartMedia() (replaceTrack, no renegotiation).
  const mediaLater = query.get("media") === "later";
  const SEI_UUID = [0xb0, 0xf7, 0xb0, 0xa1, 0x6a, 0x3d, 0x4c, 0x53, 0x9b, 0x2e, 0x6a, 0x7d, 0x3e, 0x9f, 0x1c, 0x20];

  const state = {
    status: "idle",
    errors: [],
    log: [],
    userId: null,
    meetingId: null,
    roomId: null,
    signalingPeerId: null,
    sfuPeerId: null,
    connections: 0, // RTCPeerConnections made (reconnects add one)
    connectionState: "new",
    iceServers: null,
    participants: [],
    offersHandled: 0,
    tilesRemoved: [],
    seiSent: 0,
    seiSeen: {}, // tile key -> the SEI text last read in its video
  };
  window.sfuState = state;

  let token = null;
  let ws = null;
  let pc = null;
  let connecting = false;
  let localStream = null;
  let icePoll = null;
  let offerPoll = null;
  let iceBusy = false;
  let offerBusy = false;
  let lastOfferSdp = null;
  let lastConnectAt = 0;
  let queuedCandidates = [];
  let senders = null;
  const transformed = new WeakSet();
  const tiles = new Map(); // key -> {key, element, video, label, stream}

  function note(message) {
    state.log.push(`${(performance.now() / 1000).toFixed(2)} ${message}`);
    if (state.log.length > 300) state.log.shift();
  }

  function fail(where, error) {
    const message = `${where}: ${(error && error.message) || error}`;
    state.errors.push(message);
    note(message);
  }

  function setStatus(status) {
    state.status = status;
    document.getElementById("status").textContent = status;
    note(`status ${status}`);
  }

  // JSON over fetch, same origin; on non-2xx the body's message, else error (apiFetch).
  async function api(method, path, body, { auth = true, timeout = LONG_TIMEOUT_MS, keepalive = false } = {}) {
    const headers = { "Content-Type": "application/json" };
    if (auth && token) headers.Authorization = `Bearer ${token}`;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeout);
    try {
      const response = await fetch(path, {
        method, headers, keepalive, signal: controller.signal,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      if (response.status === 204) return { status: 204, data: null };
      const text = await response.text();
      let data = null;
      try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
      if (!response.ok) {
        const error = new Error((data && (data.message || data.error)) || `HTTP ${response.status}`);
        error.status = response.status;
        throw error;
      }
      return { status: response.status, data };
    } finally {
      clearTimeout(timer);
    }
  }

  function randomId(length) {
    const bytes = new Uint8Array(length);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => "abcdefghijklmnopqrstuvwxyz0123456789"[b % 36]).join("");
  }

  // -- session -------------------------------------------------------------------

  async function start(username, password, meetingId) {
    try {
      state.username = username;
      if (!mediaLater) await startMedia();
      setStatus("login");
      const login = await api("POST", "/api/v1/auth/login", { username, password }, { auth: false });
      token = login.data.data.token;
      state.userId = String(login.data.data.user.id);
      setStatus("join");
      const joined = await api("POST", `/api/v1/meetings/${meetingId}/join`, {});
      state.meetingId = String(meetingId);
      state.roomId = String(joined.data.data.room_id);
      state.signalingPeerId = `web_${randomId(8)}`;
      openSignaling();
    } catch (e) {
      fail("start", e);
      setStatus("failed");
    }
  }

  function openSignaling() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const params = new URLSearchParams({
      meeting_id: state.meetingId, user_id: state.userId, peer_id: state.signalingPeerId, token,
    });
    ws = new WebSocket(`${scheme}//${location.host}/ws/signaling?${params}`);
    ws.onopen = () => {
      setStatus("signaling");
      ws.send(JSON.stringify({ type: TYPES.join, payload: {} }));
    };
    ws.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if (message.type === TYPES["room-info"] || message.type === "room-info") {
        onRoomInfo(message.payload || {});
      } else if (message.type === TYPES.error || message.type === "error") {
        fail("signaling", (message.payload && message.payload.message) || "error");
      }
    };
    ws.onclose = (event) => note(`signaling closed ${event.code}`);
  }

  function onRoomInfo(payload) {
    state.participants = (payload.participants || []).map((p) => ({
      peer_id: p.peer_id, username: p.username, user_id: p.user_id,
    }));
    if (Array.isArray(payload.ice_servers) && payload.ice_servers.length) state.iceServers = payload.ice_servers;
    for (const tile of tiles.values()) labelTile(tile);
    connectSfu(); // on every room-info; a no-op while a connection exists
  }

  // -- the SFU connection (connectSfu) ---------------------------------------------

  function preferH264(transceiver) {
    if (!RTCRtpReceiver.getCapabilities || !transceiver.setCodecPreferences) return;
    const codecs = RTCRtpReceiver.getCapabilities("video").codecs;
    const h264 = codecs.filter((c) => c.mimeType.toLowerCase() === "video/h264");
    const rest = codecs.filter((c) => c.mimeType.toLowerCase() !== "video/h264");
    if (h264.length) transceiver.setCodecPreferences([...h264, ...rest]);
  }

  async function startMedia() {
    localStream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 320, height: 240 } });
    if (senders) {
      await senders.audio.replaceTrack(localStream.getAudioTracks()[0] || null);
      await senders.video.replaceTrack(localStream.getVideoTracks()[0] || null);
    }
    note("media started");
  }

  // Annex B start code at i (00 00 01): the NAL type after it, else -1.
  function nalTypeAt(data, i) {
    return data[i] === 0 && data[i + 1] === 0 && data[i + 2] === 1 && i + 3 < data.length ? data[i + 3] & 0x1f : -1;
  }

  function withSei(buffer, text) {
    const data = new Uint8Array(buffer);
    let at = -1;
    for (let i = 0; i + 3 < data.length; i++) {
      const type = nalTypeAt(data, i);
      if (type === 1 || type === 5) {
        at = i > 0 && data[i - 1] === 0 ? i - 1 : i;
        break;
      }
    }
    if (at < 0) return null;
    const payload = new TextEncoder().encode(text);
    // SEI (6), user_data_unregistered (5), size, UUID, text, rbsp trailing bits.
    const sei = [0, 0, 0, 1, 0x06, 0x05, SEI_UUID.length + payload.length, ...SEI_UUID, ...payload, 0x80];
    const out = new Uint8Array(data.length + sei.length);
    out.set(data.subarray(0, at));
    out.set(sei, at);
    out.set(data.subarray(at), at + sei.length);
    return out.buffer;
  }

  function readSei(buffer) {
    const data = new Uint8Array(buffer);
    for (let i = 0; i + 6 < data.length; i++) {
      if (nalTypeAt(data, i) !== 6 || data[i + 4] !== 0x05) continue;
      const size = data[i + 5];
      const start = i + 6;
      if (start + size > data.length || size < SEI_UUID.length) continue;
      if (SEI_UUID.every((b, j) => data[start + j] === b)) {
        return new TextDecoder().decode(data.subarray(start + SEI_UUID.length, start + size));
      }
    }
    return null;
  }

  function transformSender(sender, kind) {
    try {
      const { readable, writable } = sender.createEncodedStreams();
      const text = `wecompany:${state.username}`;
      readable.pipeThrough(new TransformStream({
        transform(frame, controller) {
          if (kind === "video") {
            const changed = withSei(frame.data, text);
            if (changed) {
              frame.data = changed;
              state.seiSent += 1;
            }
          }
          controller.enqueue(frame);
        },
      })).pipeTo(writable).catch((e) => fail("sender transform", e));
    } catch (e) {
      fail("createEncodedStreams", e);
    }
  }

  function transformReceiver(receiver, kind, key) {
    try {
      const { readable, writable } = receiver.createEncodedStreams();
      readable.pipeThrough(new TransformStream({
        transform(frame, controller) {
          if (kind === "video") {
            const text = readSei(frame.data);
            if (text !== null) state.seiSeen[key] = text;
          }
          controller.enqueue(frame);
        },
      })).pipeTo(writable).catch((e) => fail("receiver transform", e));
    } catch (e) {
      fail("createEncodedStreams", e);
    }
  }

  async function connectSfu() {
    if (pc || connecting || !state.roomId) return;
    connecting = true;
    lastConnectAt = performance.now();
    try {
      const iceServers = (state.iceServers || []).map((s) => {
        const server = { urls: s.urls };
        if (s.username) server.username = s.username;
        if (s.credential) server.credential = s.credential;
        return server;
      });
      const config = { iceServers };
      if (insertable) config.encodedInsertableStreams = true;
      const connection = new RTCPeerConnection(config);
      pc = connection;
      state.connections += 1;
      state.sfuPeerId = null;
      queuedCandidates = [];
      lastOfferSdp = null;
      const audio = connection.addTransceiver("audio", { direction: "sendrecv" });
      const video = connection.addTransceiver("video", { direction: "sendrecv" });
      preferH264(video);
      if (insertable) {
        transformSender(audio.sender, "audio");
        transformSender(video.sender, "video");
      }
      senders = { audio: audio.sender, video: video.sender };
      await audio.sender.replaceTrack((localStream && localStream.getAudioTracks()[0]) || null);
      await video.sender.replaceTrack((localStream && localStream.getVideoTracks()[0]) || null);
      connection.onicecandidate = (event) => {
        if (!event.candidate || !event.candidate.candidate) return; // end-of-candidates is never sent
        const candidate = event.candidate.toJSON();
        if (state.sfuPeerId && pc === connection) sendCandidate(state.sfuPeerId, candidate);
        else queuedCandidates.push(candidate);
      };
      connection.ontrack = (event) => onTrack(event);
      connection.onconnectionstatechange = () => {
        if (pc !== connection) return;
        state.connectionState = connection.connectionState;
        note(`pc ${connection.connectionState}`);
      };
      const offer = await connection.createOffer();
      await connection.setLocalDescription(offer);
      const opened = await api("POST", "/api/v1/webrtc/answer", {
        room_id: state.roomId, user_id: state.userId,
        offer: { type: "offer", sdp: connection.localDescription.sdp },
      }, { auth: false });
      if (pc !== connection) return;
      state.sfuPeerId = opened.data.peer_id;
      await connection.setRemoteDescription(opened.data.answer);
      for (const candidate of queuedCandidates.splice(0)) sendCandidate(state.sfuPeerId, candidate);
      startPolls(connection);
      setStatus("connected-sfu");
    } catch (e) {
      fail("connectSfu", e);
    } finally {
      connecting = false;
    }
  }

  function sendCandidate(peerId, candidate) {
    // The only SFU call with the token (the client's default); result and errors ignored.
    api("POST", "/api/v1/webrtc/ice-candidate", { peer_id: peerId, candidate }, { timeout: SHORT_TIMEOUT_MS })
      .catch((e) => note(`ice-candidate: ${e.message}`));
  }

  function startPolls(connection) {
    stopPolls();
    icePoll = setInterval(() => pollIceCandidates(connection), ICE_POLL_MS);
    offerPoll = setInterval(() => pollOffer(connection), OFFER_POLL_MS);
  }

  function stopPolls() {
    if (icePoll) clearInterval(icePoll);
    if (offerPoll) clearInterval(offerPoll);
    icePoll = offerPoll = null;
    iceBusy = offerBusy = false;
  }

  async function pollIceCandidates(connection) {
    if (iceBusy || pc !== connection || !state.sfuPeerId) return;
    iceBusy = true;
    try {
      const result = await api("GET", `/api/v1/webrtc/peer/${encodeURIComponent(state.sfuPeerId)}/ice-candidates`,
        undefined, { auth: false, timeout: SHORT_TIMEOUT_MS });
      if (pc !== connection) return;
      const candidates = (result.data && result.data.candidates) || [];
      for (const candidate of candidates) {
        try { await connection.addIceCandidate(candidate); } catch (e) { fail("addIceCandidate", e); }
      }
      const ice = connection.iceConnectionState;
      if (result.data && result.data.complete && (!candidates.length || ice === "connected" || ice === "completed")) {
        clearInterval(icePoll);
        icePoll = null;
      }
    } catch (e) {
      pollFailed(e);
    } finally {
      iceBusy = false;
    }
  }

  async function pollOffer(connection) {
    if (offerBusy || pc !== connection || !state.sfuPeerId) return;
    offerBusy = true;
    const peerId = state.sfuPeerId;
    try {
      const result = await api("GET", `/api/v1/webrtc/peer/${encodeURIComponent(peerId)}/offer`, undefined,
        { auth: false, timeout: SHORT_TIMEOUT_MS });
      if (pc !== connection || result.status === 204 || !result.data || !result.data.offer) return;
      const sdp = result.data.offer.sdp;
      if (sdp === lastOfferSdp) return;
      lastOfferSdp = sdp;
      await connection.setRemoteDescription({ type: "offer", sdp });
      const answer = await connection.createAnswer();
      await connection.setLocalDescription(answer);
      await api("POST", `/api/v1/webrtc/peer/${encodeURIComponent(peerId)}/answer`,
        { answer: { type: "answer", sdp: connection.localDescription.sdp } }, { auth: false });
      state.offersHandled += 1;
      note(`renegotiated (${state.offersHandled})`);
    } catch (e) {
      if (e.status) pollFailed(e);
      else fail("renegotiation", e);
    } finally {
      offerBusy = false;
    }
  }

  function pollFailed(error) {
    if (error.status === 404 && /peer not found/i.test(error.message)) {
      note("peer not found: reconnecting");
      disconnectSfu();
      const wait = Math.max(500, RECONNECT_GAP_MS - (performance.now() - lastConnectAt));
      setTimeout(() => connectSfu(), wait);
    } else {
      note(`poll: ${error.message}`);
    }
  }

  function disconnectSfu() {
    stopPolls();
    if (pc) {
      try { pc.close(); } catch (e) { /* closed already */ }
    }
    pc = null;
    senders = null;
    state.sfuPeerId = null;
    state.connectionState = "closed";
    for (const key of Array.from(tiles.keys())) removeTile(key);
  }

  // -- remote tracks -> tiles (Track -> user mapping) --------------------------------

  function onTrack(event) {
    const track = event.track;
    const stream = event.streams && event.streams[0];
    const mid = event.transceiver && event.transceiver.mid;
    const key = stream ? stream.id : (mid != null ? `mid_${mid}` : `track_${track.id}`);
    if (insertable && !transformed.has(event.receiver)) {
      transformed.add(event.receiver); // an m-line reused by a later offer fires ontrack again
      transformReceiver(event.receiver, track.kind, key);
    }
    let tile = tiles.get(key);
    if (!tile) {
      const element = document.createElement("div");
      element.className = "tile";
      element.dataset.key = key;
      const label = document.createElement("span");
      label.className = "label";
      const video = document.createElement("video");
      video.autoplay = true;
      video.muted = true;
      video.playsInline = true;
      element.append(label, video);
      document.getElementById("tiles").append(element);
      tile = { key, element, video, label, stream: stream || new MediaStream() };
      tiles.set(key, tile);
      labelTile(tile);
      video.srcObject = tile.stream;
      note(`tile ${key} added`);
    }
    if (!tile.stream.getTracks().includes(track)) tile.stream.addTrack(track);
    // The SFU ends a publisher by renegotiating its m-lines away: the track leaves its stream.
    tile.stream.onremovetrack = () => {
      if (!tile.stream.getTracks().some((t) => t.readyState === "live")) removeTile(key);
    };
    track.onended = () => {
      if (!tile.stream.getTracks().some((t) => t.readyState === "live")) removeTile(key);
    };
    tile.video.play().catch(() => {});
  }

  function labelTile(tile) {
    const participant = state.participants.find((p) => p.peer_id === tile.key);
    const text = participant ? participant.username : `远端 ${tile.key.slice(0, 8)}`;
    tile.label.textContent = text;
    tile.element.dataset.label = text;
  }

  function removeTile(key) {
    const tile = tiles.get(key);
    if (!tile) return;
    tiles.delete(key);
    tile.video.srcObject = null;
    tile.element.remove();
    state.tilesRemoved.push(key);
    note(`tile ${key} removed`);
  }

  // -- leave (leaveMeeting) ----------------------------------------------------------

  async function leave() {
    setStatus("leaving");
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: TYPES.leave, payload: {} }));
    if (state.roomId) {
      try {
        await api("POST", `/api/v1/webrtc/room/${encodeURIComponent(state.roomId)}/leave`,
          { user_id: state.userId }, { auth: false, timeout: SHORT_TIMEOUT_MS });
      } catch (e) {
        note(`sfu leave: ${e.message}`);
      }
    }
    if (ws) ws.close();
    ws = null;
    disconnectSfu();
    try {
      await api("POST", `/api/v1/meetings/${state.meetingId}/leave`, {});
    } catch (e) {
      fail("leave", e);
    }
    state.roomId = null;
    setStatus("left");
  }

  // -- what the test reads ------------------------------------------------------------

  window.sfuTiles = () => Array.from(tiles.values(), (tile) => ({
    key: tile.key,
    label: tile.label.textContent,
    kinds: tile.stream.getTracks().map((t) => t.kind).sort(),
  }));

  // tile key -> {framesDecoded, codec, width, height} of its inbound video (getStats of its video tracks).
  window.sfuInboundVideo = async () => {
    const out = {};
    if (!pc) return out;
    for (const tile of tiles.values()) {
      for (const track of tile.stream.getVideoTracks()) {
        const report = await pc.getStats(track);
        report.forEach((s) => {
          if (s.type !== "inbound-rtp" || s.kind !== "video") return;
          const codec = s.codecId && report.get(s.codecId);
          out[tile.key] = {
            framesDecoded: s.framesDecoded || 0,
            codec: codec ? codec.mimeType : null,
            width: s.frameWidth || 0,
            height: s.frameHeight || 0,
          };
        });
      }
    }
    return out;
  };

  // tile key -> framesDecoded of its inbound video.
  window.sfuFramesDecoded = async () => {
    const out = {};
    for (const [key, video] of Object.entries(await window.sfuInboundVideo())) out[key] = video.framesDecoded;
    return out;
  };

  window.sfuLeave = leave;
  window.sfuStartMedia = () => startMedia().catch((e) => fail("media", e));

  document.getElementById("start-form").addEventListener("submit", (event) => {
    event.preventDefault();
    start(document.getElementById("username").value, document.getElementById("password").value,
      document.getElementById("meeting").value);
  });
  document.getElementById("leave").addEventListener("click", () => leave());
  if (query.get("username") && query.get("password") && query.get("meeting")) {
    start(query.get("username"), query.get("password"), query.get("meeting"));
  }
})();
