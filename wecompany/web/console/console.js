// The WeCompany web console: plain JavaScript, no build step, no third-party
// code; everything it loads comes from the daemon that serves it.
//
// The session (access and refresh token, the user) is kept in sessionStorage:
// it lasts as long as the tab and is never sent anywhere but in the
// Authorization header of this origin's API calls. Text from the server is
// put on the page with textContent only, never as HTML.
"use strict";

(function () {
  const SESSION_KEY = "wecompany.console.session";
  const PAGE_SIZE = 20;
  const RECONNECT_MS = 2000;

  const $ = (id) => document.getElementById(id);
  const state = { session: null, live: null, pages: { users: 1, meetings: 1, mine: 1 } };

  // -- the session ---------------------------------------------------------
  function loadSession() {
    try {
      return JSON.parse(sessionStorage.getItem(SESSION_KEY));
    } catch (e) {
      return null;
    }
  }

  function saveSession(session) {
    state.session = session;
    if (session) sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
    else sessionStorage.removeItem(SESSION_KEY);
  }

  function isAdmin() {
    return !!(state.session && state.session.user && state.session.user.role === "admin");
  }

  // -- the REST API --------------------------------------------------------
  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || ("HTTP " + status));
      this.status = status;
      this.body = body;
    }
  }

  async function request(method, path, body, auth) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (auth && state.session) headers.Authorization = "Bearer " + state.session.token;
    const response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store", credentials: "omit",
    });
    let parsed = null;
    try {
      parsed = await response.json();
    } catch (e) {
      parsed = null;
    }
    if (!response.ok) throw new ApiError(response.status, parsed);
    return parsed ? parsed.data : null;
  }

  // An authenticated call; an expired access token is refreshed once.
  async function api(method, path, body) {
    try {
      return await request(method, path, body, true);
    } catch (e) {
      if (e.status === 401 && await refresh()) return request(method, path, body, true);
      if (e.status === 401) signedOut("Your session has ended: log in again.");
      throw e;
    }
  }

  async function refresh() {
    if (!state.session || !state.session.refresh_token) return false;
    try {
      const data = await request("POST", "/api/v1/auth/refresh", { refresh_token: state.session.refresh_token }, false);
      saveSession({ token: data.token, refresh_token: data.refresh_token, user: data.user });
      return true;
    } catch (e) {
      return false;
    }
  }

  // -- log in and out ------------------------------------------------------
  async function logIn(event) {
    event.preventDefault();
    $("login-error").textContent = "";
    const username = $("login-username").value.trim();
    const password = $("login-password").value;
    try {
      const data = await request("POST", "/api/v1/auth/login", { username, password }, false);
      $("login-password").value = "";
      saveSession({ token: data.token, refresh_token: data.refresh_token, user: data.user });
      showApp();
    } catch (e) {
      $("login-error").textContent = e.message;
    }
  }

  async function logOut() {
    const session = state.session;
    if (session) {
      try {
        await request("POST", "/api/v1/auth/logout", { refresh_token: session.refresh_token }, true);
      } catch (e) {
        // Signed out here whatever the server said.
      }
    }
    signedOut("");
  }

  function signedOut(message) {
    stopLive();
    saveSession(null);
    $("app-view").hidden = true;
    $("whoami").hidden = true;
    $("login-view").hidden = false;
    $("login-error").textContent = message;
  }

  function showApp() {
    const user = state.session.user;
    $("login-view").hidden = true;
    $("app-view").hidden = false;
    $("whoami").hidden = false;
    $("whoami-name").textContent = user.nickname || user.username;
    $("whoami-role").textContent = user.role;
    for (const el of document.querySelectorAll(".admin-only")) el.hidden = !isAdmin();
    selectTab(isAdmin() ? "dashboard" : "mine");
  }

  // -- tabs ----------------------------------------------------------------
  function selectTab(name) {
    for (const tab of document.querySelectorAll(".tab")) tab.hidden = tab.id !== "tab-" + name;
    for (const button of document.querySelectorAll("#tabs button")) {
      button.classList.toggle("selected", button.dataset.tab === name);
    }
    $("app-error").textContent = "";
    if (name === "dashboard") startLive();
    else stopLive();
    if (name === "users") loadUsers();
    if (name === "meetings") loadMeetings();
    if (name === "mine") loadMine();
  }

  function showError(e) {
    $("app-error").textContent = e.message || String(e);
  }

  // -- small DOM helpers ---------------------------------------------------
  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    return td;
  }

  function row(values, attrs) {
    const tr = document.createElement("tr");
    for (const [key, value] of Object.entries(attrs || {})) tr.dataset[key] = value;
    for (const value of values) tr.appendChild(value instanceof Node ? value : cell(value));
    return tr;
  }

  function button(text, className, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.className = className;
    b.addEventListener("click", onClick);
    const td = document.createElement("td");
    td.appendChild(b);
    return td;
  }

  function fill(tbody, rows, emptyText, columns) {
    tbody.replaceChildren(...rows);
    if (!rows.length) {
      const td = cell(emptyText);
      td.colSpan = columns;
      td.className = "empty";
      const tr = document.createElement("tr");
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
  }

  function when(text) {
    return text ? new Date(text).toLocaleString() : "";
  }

  function pager(name, page, load) {
    $(name + "-page").textContent = "page " + page.page + " of " + Math.max(1, page.total_pages) +
      " (" + page.total + ")";
    $(name + "-prev").disabled = page.page <= 1;
    $(name + "-next").disabled = page.page >= page.total_pages;
  }

  // -- the live dashboard (server-sent events, read with fetch) ------------
  function startLive() {
    if (state.live || !isAdmin()) return;
    const live = { controller: new AbortController(), stopped: false };
    state.live = live;
    readLive(live);
  }

  function stopLive() {
    if (!state.live) return;
    state.live.stopped = true;
    state.live.controller.abort();
    state.live = null;
  }

  async function readLive(live) {
    while (!live.stopped) {
      $("live-status").textContent = "connecting";
      try {
        const response = await fetch("/api/v1/admin/live", {
          headers: { Accept: "text/event-stream", Authorization: "Bearer " + state.session.token },
          cache: "no-store", credentials: "omit", signal: live.controller.signal,
        });
        if (response.status === 401) {
          if (!(await refresh())) {
            signedOut("Your session has ended: log in again.");
            return;
          }
          continue;
        }
        if (!response.ok) throw new Error("the live dashboard answered " + response.status);
        $("live-status").textContent = "live";
        await readEvents(response.body.getReader(), live);
      } catch (e) {
        if (live.stopped) return;
        $("live-status").textContent = "reconnecting (" + (e.message || e) + ")";
      }
      if (live.stopped) return;
      await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
    }
  }

  async function readEvents(reader, live) {
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done || live.stopped) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (name === "snapshot" && data.length) showSnapshot(JSON.parse(data.join("\n")));
        if (name === "end" && data.length) $("live-status").textContent = "ended: " + JSON.parse(data.join("\n")).reason;
      }
    }
  }

  function showSnapshot(s) {
    $("live-time").textContent = s.time ? "updated " + new Date(s.time).toLocaleTimeString() : "";
    $("stat-online").textContent = s.online.users;
    $("stat-tcp").textContent = s.online.by_transport.tcp || 0;
    $("stat-ws").textContent = s.online.by_transport.ws || 0;
    $("stat-calls").textContent = s.calls.count + " (" + s.calls.active + " active)";
    $("stat-rooms").textContent = s.rooms.count;
    $("stat-mps").textContent = s.messages_per_second;
    $("stat-rps").textContent = s.rest.requests_per_second;
    const ms = (v) => (v === null || v === undefined ? "-" : v);
    $("stat-latency").textContent = ms(s.rest.mean_ms) + " / " + ms(s.rest.p50_ms) + " / " + ms(s.rest.p95_ms);
    fill($("online-list"), s.online.list.map((u) => row([u.user_id, u.username, u.transports.join(", ")],
      { userId: u.user_id, username: u.username })), "nobody is online", 3);
    fill($("calls-list"), s.calls.list.map((c) => row([c.caller, c.callee, c.state, c.is_video ? "yes" : "no",
      when(c.since)], { callId: c.call_id })), "no calls", 5);
    fill($("rooms-list"), s.rooms.list.map((r) => row([r.meeting_id, r.title,
      r.members.map((m) => m.username + (m.node ? " @" + m.node : "")).join(", ") || "(" + r.member_count + ")"],
      { meetingId: r.meeting_id })), "no rooms", 3);
    const cluster = s.cluster || { enabled: false };
    $("cluster-status").textContent = cluster.enabled
      ? "This node: " + cluster.node + "; Redis: " + cluster.redis : "Not clustered (one node).";
    $("cluster-nodes").replaceChildren(...(cluster.nodes || []).map((n) => {
      const li = document.createElement("li");
      li.textContent = n;
      return li;
    }));
  }

  // -- user administration -------------------------------------------------
  async function loadUsers() {
    const query = new URLSearchParams({ page: state.pages.users, page_size: PAGE_SIZE });
    const keyword = $("user-search").value.trim();
    if (keyword) query.set("keyword", keyword);
    if ($("user-status").value) query.set("status", $("user-status").value);
    try {
      const page = await api("GET", "/api/v1/admin/users?" + query);
      const me = state.session.user.id;
      fill($("users-table"), page.list.map((u) => row([u.id, u.username, u.email, u.role, u.status,
        u.id === me || u.status === "deleted" ? cell("")
          : u.status === "banned" ? button("Unban", "unban-user", () => setBanned(u, false))
            : button("Ban", "ban-user", () => setBanned(u, true))],
      { userId: u.id, username: u.username })), "no users", 6);
      pager("users", page);
    } catch (e) {
      showError(e);
    }
  }

  async function setBanned(user, banned) {
    if (banned && !window.confirm("Ban " + user.username + "? They are signed out everywhere.")) return;
    try {
      await api("POST", "/api/v1/admin/users/" + user.id + (banned ? "/ban" : "/unban"));
      loadUsers();
    } catch (e) {
      showError(e);
    }
  }

  // -- meeting administration ----------------------------------------------
  function meetingCells(m) {
    return [m.id, m.title, m.meeting_type, m.status, when(m.start_time)];
  }

  async function loadMeetings() {
    const query = new URLSearchParams({ page: state.pages.meetings, page_size: PAGE_SIZE });
    const keyword = $("meeting-search").value.trim();
    if (keyword) query.set("keyword", keyword);
    if ($("meeting-status").value) query.set("status", $("meeting-status").value);
    try {
      const page = await api("GET", "/api/v1/admin/meetings?" + query);
      fill($("meetings-table"), page.list.map((m) => row([...meetingCells(m),
        m.status === "ended" || m.status === "cancelled" ? cell("")
          : button("End", "end-meeting", () => endMeeting(m))],
      { meetingId: m.id, status: m.status })), "no meetings", 6);
      pager("meetings", page);
    } catch (e) {
      showError(e);
    }
  }

  async function endMeeting(meeting) {
    if (!window.confirm("End the meeting \u201c" + meeting.title + "\u201d for everyone in it?")) return;
    try {
      await api("POST", "/api/v1/admin/meetings/" + meeting.id + "/end");
      loadMeetings();
    } catch (e) {
      showError(e);
    }
  }

  // -- my meetings ---------------------------------------------------------
  async function loadMine() {
    const query = new URLSearchParams({ page: state.pages.mine, page_size: PAGE_SIZE });
    try {
      const page = await api("GET", "/api/v1/my/meetings?" + query);
      fill($("my-meetings-table"), page.list.map((m) => row([...meetingCells(m), when(m.end_time)],
        { meetingId: m.id, status: m.status })), "no meetings", 6);
      pager("mine", page);
    } catch (e) {
      showError(e);
    }
  }

  // -- wiring --------------------------------------------------------------
  function pagerButtons(name, load) {
    $(name + "-prev").addEventListener("click", () => { state.pages[name] = Math.max(1, state.pages[name] - 1); load(); });
    $(name + "-next").addEventListener("click", () => { state.pages[name] += 1; load(); });
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", logIn);
    $("logout").addEventListener("click", logOut);
    for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => selectTab(b.dataset.tab));
    $("user-search-form").addEventListener("submit", (e) => { e.preventDefault(); state.pages.users = 1; loadUsers(); });
    $("meeting-search-form").addEventListener("submit", (e) => { e.preventDefault(); state.pages.meetings = 1; loadMeetings(); });
    pagerButtons("users", loadUsers);
    pagerButtons("meetings", loadMeetings);
    pagerButtons("mine", loadMine);
    state.session = loadSession();
    if (state.session && state.session.token) showApp();
    else signedOut("");
  });
})();
