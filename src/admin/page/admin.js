// The admin page's script. It calls the JSON API of the listener it was served from and puts
// what comes back into the page only through textContent and createElement: session data is
// written by users, so nothing from the API is ever parsed as markup (no innerHTML, no markup
// built from strings, no eval). The page's policy forbids inline script and style as well.
//
// The token, if the listener needs one, is kept in sessionStorage (this tab only) and sent as
// `Authorization: Bearer`; there is no admin cookie.
"use strict";

(() => {
  const TOKEN_KEY = "session-proxy-admin-token";
  // A session's handle (its public name: base64url of the SHA-256 of its id), 43 characters.
  const HANDLE_PATTERN = /^[A-Za-z0-9_-]{43}$/;
  // A session id (a bearer credential): refused, never echoed or sent.
  const ID_PATTERN = /^[A-Za-z0-9_-]{32}$/;

  const $ = (id) => document.getElementById(id);

  const state = {
    limit: 25,
    // The cursor of the page on show (null: the first page), the one after it, and the page's
    // number counted from the first.
    cursor: null,
    next: null,
    pageNumber: 1,
    // The id of the session open in the detail view.
    open: null,
    // The user whose sessions the table shows (null: every session, paged).
    user: null,
  };

  // ---- small DOM helpers: text only ----

  function el(tag, props, children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (key === "text") node.textContent = value;
        else if (key === "className") node.className = value;
        else if (key === "title") node.title = value;
        else if (key === "type") node.type = value;
        else throw new Error("el: unsupported property " + key);
      }
    }
    for (const child of children || []) node.appendChild(child);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function showMessage(text, kind) {
    const box = $("message");
    box.textContent = text;
    box.className = "message " + (kind || "info");
    box.hidden = false;
  }

  function clearMessage() {
    const box = $("message");
    box.textContent = "";
    box.hidden = true;
  }

  function shortId(id) {
    return id.length > 8 ? id.slice(0, 8) + "\u2026" : id;
  }

  function formatTime(ms) {
    if (typeof ms !== "number") return "\u2013";
    return new Date(ms).toLocaleString();
  }

  // The table's times: short enough for a user column beside them (the title has the exact one).
  function shortTime(ms) {
    if (typeof ms !== "number") return "\u2013";
    return new Date(ms).toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" });
  }

  function isoTime(ms) {
    return typeof ms === "number" ? new Date(ms).toISOString() : "";
  }

  function formatSize(bytes) {
    if (typeof bytes !== "number") return "\u2013";
    if (bytes < 1024) return bytes + " B";
    if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(1) + " KiB";
    return (bytes / (1024 * 1024)).toFixed(1) + " MiB";
  }

  // ---- the API ----

  class AuthNeeded extends Error {}

  class ApiFailure extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  // One call. Resolves to the parsed JSON (or text for `/metrics`, null for 204); rejects with
  // AuthNeeded on 401 (after showing the token form) or ApiFailure with the API's message.
  async function api(method, path, body, asText) {
    const headers = { Accept: asText ? "application/openmetrics-text, text/plain" : "application/json" };
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let resp;
    try {
      resp = await fetch(path, {
        method,
        headers,
        body,
        credentials: "omit",
        cache: "no-store",
      });
    } catch (e) {
      throw new ApiFailure(0, "The admin listener did not answer: " + e.message);
    }
    if (resp.status === 401) {
      const message = await errorText(resp);
      needToken(t ? "The token was refused: " + message : message);
      throw new AuthNeeded(message);
    }
    if (!resp.ok) {
      throw new ApiFailure(resp.status, await errorText(resp));
    }
    if (resp.status === 204) return null;
    return asText ? resp.text() : resp.json();
  }

  async function errorText(resp) {
    const fallback = "HTTP " + resp.status + " " + resp.statusText;
    try {
      const body = await resp.json();
      if (body && typeof body.error === "string" && body.error) return body.error;
    } catch (_) {
      // not JSON: say the status
    }
    return fallback;
  }

  // Runs `work`, showing any failure other than a missing token in the message area.
  async function guarded(work) {
    try {
      return await work();
    } catch (e) {
      if (e instanceof AuthNeeded) return undefined;
      showMessage(e.message, "error");
      return undefined;
    }
  }

  // ---- the token ----

  function needToken(message) {
    $("app").hidden = true;
    $("auth").hidden = false;
    $("forget-token").hidden = !token();
    showMessage(message, "error");
    $("token-input").focus();
  }

  function saveToken(event) {
    event.preventDefault();
    const value = $("token-input").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token-input").value = "";
    $("auth").hidden = true;
    clearMessage();
    start();
  }

  function forgetToken(event) {
    event.preventDefault();
    sessionStorage.removeItem(TOKEN_KEY);
    closeDetail();
    clear($("session-rows"));
    clear($("metrics"));
    $("forget-token").hidden = true;
    $("app").hidden = true;
    $("auth").hidden = false;
    showMessage("The token is forgotten.", "info");
  }

  // ---- metrics ----

  // Parses the OpenMetrics / Prometheus text format into [{name, labels, value}].
  function parseMetrics(text) {
    const samples = [];
    const line = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
    const label = /([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (const raw of text.split("\n")) {
      if (!raw || raw.startsWith("#")) continue;
      const m = line.exec(raw);
      if (!m) continue;
      const labels = {};
      if (m[2]) {
        for (const l of m[2].matchAll(label)) labels[l[1]] = l[2];
      }
      samples.push({ name: m[1], labels, value: Number(m[3]) });
    }
    return samples;
  }

  // The sum of every sample named `name` whose labels include `where`; null if there is none.
  function metric(samples, name, where) {
    let found = false;
    let sum = 0;
    for (const s of samples) {
      if (s.name !== name) continue;
      if (where && !Object.entries(where).every(([k, v]) => s.labels[k] === v)) continue;
      found = true;
      sum += s.value;
    }
    return found ? sum : null;
  }

  function renderMetrics(samples) {
    const requests = "session_proxy_requests_total";
    const counters = [
      ["Requests 2xx", metric(samples, requests, { status: "2xx" }), "ok"],
      ["Requests 4xx", metric(samples, requests, { status: "4xx" }), "warn"],
      ["Requests 5xx", metric(samples, requests, { status: "5xx" }), "bad"],
      ["Sessions created", metric(samples, "session_proxy_sessions_created_total")],
      ["Sessions updated", metric(samples, "session_proxy_sessions_updated_total")],
      ["Sessions destroyed", metric(samples, "session_proxy_sessions_destroyed_total")],
      ["Live sessions", metric(samples, "session_proxy_sessions_live"), "", true],
      ["Store errors", metric(samples, "session_proxy_store_errors_total"), "bad"],
    ];
    const box = $("metrics");
    clear(box);
    for (const [label, value, tone, optional] of counters) {
      if (value === null && optional) continue; // only stores that count report live sessions
      const shown = value === null ? 0 : value;
      const cls = "counter" + (tone && shown > 0 ? " " + tone : "");
      box.appendChild(
        el("div", { className: cls }, [
          el("span", { className: "counter-value", text: shown.toLocaleString() }),
          el("span", { className: "counter-label", text: label }),
        ]),
      );
    }
  }

  async function loadMetrics() {
    const text = await api("GET", "/metrics", undefined, true);
    renderMetrics(parseMetrics(text));
  }

  // ---- the list ----

  async function loadList() {
    if (state.user !== null) return loadUser();
    let path = "/sessions?limit=" + encodeURIComponent(state.limit);
    if (state.cursor !== null) path += "&cursor=" + encodeURIComponent(state.cursor);
    const page = await api("GET", path);
    state.next = page.next_cursor;
    renderList(page.sessions || []);
  }

  function renderList(sessions) {
    const body = $("session-rows");
    clear(body);
    for (const s of sessions) {
      const open = el("button", {
        type: "button",
        className: "link id",
        text: shortId(s.handle),
        title: s.handle,
      });
      open.addEventListener("click", () => guarded(() => openSession(s.handle)));
      const row = el("tr", null, [
        el("td", null, [open]),
        el("td", { className: "user", text: typeof s.user === "string" ? s.user : "\u2013" }),
        el("td", { text: shortTime(s.created_at), title: isoTime(s.created_at) }),
        el("td", { text: shortTime(s.updated_at), title: isoTime(s.updated_at) }),
        el("td", { text: shortTime(s.expires_at), title: isoTime(s.expires_at) }),
        el("td", { className: "num", text: formatSize(s.size), title: s.size + " bytes" }),
      ]);
      row.dataset.id = s.handle;
      if (s.handle === state.open) row.classList.add("selected");
      body.appendChild(row);
    }
    $("empty").hidden = sessions.length > 0;
    $("empty").textContent =
      state.user !== null
        ? "No live sessions of this user."
        : state.pageNumber > 1
          ? "No more sessions."
          : "No live sessions.";
    $("next-page").disabled = state.next === null || state.next === undefined;
    $("first-page").disabled = state.cursor === null;
    const count = sessions.length === 1 ? "1 session" : sessions.length + " sessions";
    $("page-info").textContent = "Page " + state.pageNumber + " \u00b7 " + count;
  }

  function markSelected() {
    for (const row of $("session-rows").rows) {
      row.classList.toggle("selected", row.dataset.id === state.open);
    }
  }

  function firstPage() {
    state.cursor = null;
    state.next = null;
    state.pageNumber = 1;
    clearMessage();
    return guarded(loadList);
  }

  function nextPage() {
    if (state.next === null || state.next === undefined) return undefined;
    state.cursor = state.next;
    state.pageNumber += 1;
    clearMessage();
    return guarded(loadList);
  }

  function changePageSize() {
    state.limit = Number($("page-size").value) || 25;
    return firstPage();
  }

  // ---- search ----

  function search(event) {
    event.preventDefault();
    const text = $("search-input").value.trim();
    clearMessage();
    if (!text) return undefined;
    if (ID_PATTERN.test(text)) {
      $("search-input").value = "";
      showMessage(
        "That is a session id, not a handle: the admin page names sessions by handle. " +
          "On the proxy's host, `session-proxy sessions show --id ID` finds a session from its id.",
        "error",
      );
      return undefined;
    }
    if (!HANDLE_PATTERN.test(text)) {
      showMessage(
        "\u201c" + text + "\u201d is not a session handle: a handle is 43 characters of A\u2013Z, " +
          "a\u2013z, 0\u20139, \u201c-\u201d and \u201c_\u201d.",
        "error",
      );
      return undefined;
    }
    return guarded(async () => {
      try {
        await openSession(text);
        $("search-input").value = "";
      } catch (e) {
        if (e instanceof ApiFailure && e.status === 404) {
          throw new ApiFailure(404, "No live session has the handle " + text + ".");
        }
        throw e;
      }
    });
  }

  // ---- one user ----

  async function loadUser() {
    const page = await api("GET", "/users/" + encodeURIComponent(state.user) + "/sessions");
    state.next = null;
    renderList(page.sessions || []);
    const n = (page.sessions || []).length;
    $("page-info").textContent = n === 1 ? "1 session" : n + " sessions";
    $("first-page").disabled = true;
  }

  function showUser(event) {
    event.preventDefault();
    const text = $("user-input").value.trim();
    clearMessage();
    if (!text) return undefined;
    return guarded(async () => {
      const before = state.user;
      state.user = text;
      try {
        await loadUser();
      } catch (e) {
        state.user = before;
        throw e;
      }
      resetRevoke();
      $("user-name").textContent = text;
      $("user-bar").hidden = false;
      $("user-input").value = "";
    });
  }

  function allSessions() {
    state.user = null;
    $("user-bar").hidden = true;
    resetRevoke();
    return firstPage();
  }

  // Like delete, the sign-out asks once more inside the page.
  function startRevoke() {
    $("revoke-start").hidden = true;
    $("revoke-confirm").hidden = false;
    $("revoke-no").focus();
  }

  function resetRevoke() {
    $("revoke-start").hidden = false;
    $("revoke-confirm").hidden = true;
  }

  async function confirmRevoke() {
    const user = state.user;
    if (user === null) return;
    const answer = await api("DELETE", "/users/" + encodeURIComponent(user) + "/sessions");
    resetRevoke();
    if (state.open) closeDetail();
    const n = answer.revoked;
    showMessage(
      "Signed " + user + " out everywhere: " + (n === 1 ? "1 session" : n + " sessions") + " ended.",
      "ok",
    );
    await Promise.all([loadList(), loadMetrics()]);
  }

  // ---- one session ----

  async function openSession(id) {
    const record = await api("GET", "/sessions/" + encodeURIComponent(id));
    clearMessage();
    state.open = record.handle;
    renderDetail(record);
    $("patch-input").value = "";
    markSelected();
  }

  // An X-Session-Remember duration (ms), in days, or hours under a day.
  function remembered(ms) {
    return ms >= 86400000 ? Math.round(ms / 86400000) + " d" : Math.round(ms / 3600000) + " h";
  }

  function renderDetail(record) {
    resetDelete();
    $("detail").hidden = false;
    $("detail-title").textContent = "Session " + shortId(record.handle);
    const meta = $("detail-meta");
    clear(meta);
    const text = JSON.stringify(record.data, null, 2);
    const rows = [
      ["Handle", record.handle, "mono"],
      ["Created", formatTime(record.created_at)],
      ["Updated", formatTime(record.updated_at)],
      ["Expires", formatTime(record.expires_at)],
      ["Version", String(record.version)],
      // The device (a session stored before it was kept shows dashes); all text, never markup.
      ["Last seen", record.last_seen ? formatTime(record.last_seen) : "\u2013"],
      ["Created from", record.created_ip || "\u2013", "mono"],
      ["Last from", record.last_ip || "\u2013", "mono"],
      ["User agent", record.user_agent || "\u2013"],
      ["Remembered", record.remember ? remembered(record.remember) : "no"],
      ["Returned", record.returned ? "yes" : "not yet"],
    ];
    for (const [name, value, cls] of rows) {
      meta.appendChild(el("dt", { text: name }));
      meta.appendChild(el("dd", { text: value, className: cls || "" }));
    }
    $("detail-data").textContent = text;
  }

  function closeDetail() {
    state.open = null;
    $("detail").hidden = true;
    $("detail-data").textContent = "";
    clear($("detail-meta"));
    resetDelete();
    markSelected();
  }

  async function applyPatch() {
    const id = state.open;
    if (!id) return;
    const body = $("patch-input").value.trim();
    if (!body) {
      showMessage("Type a JSON merge patch first, e.g. {\"role\": \"admin\"}.", "error");
      return;
    }
    const record = await api("PATCH", "/sessions/" + encodeURIComponent(id), body);
    renderDetail(record);
    showMessage("Patched session " + shortId(id) + ": version " + record.version + ".", "ok");
    await Promise.all([loadList(), loadMetrics()]);
  }

  // The delete button asks once more inside the page (no window.confirm).
  function startDelete() {
    $("delete-start").hidden = true;
    $("delete-confirm").hidden = false;
    $("delete-no").focus();
  }

  function resetDelete() {
    $("delete-start").hidden = false;
    $("delete-confirm").hidden = true;
  }

  async function confirmDelete() {
    const id = state.open;
    if (!id) return;
    await api("DELETE", "/sessions/" + encodeURIComponent(id));
    closeDetail();
    showMessage("Deleted session " + shortId(id) + ".", "ok");
    await Promise.all([loadList(), loadMetrics()]);
  }

  // ---- start ----

  async function start() {
    await guarded(async () => {
      await Promise.all([loadMetrics(), loadList()]);
      $("auth").hidden = true;
      $("app").hidden = false;
      $("forget-token").hidden = !token();
    });
  }

  function refresh() {
    clearMessage();
    return guarded(async () => {
      await Promise.all([loadMetrics(), loadList()]);
      if (state.open) await openSession(state.open);
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("token-form").addEventListener("submit", saveToken);
    $("forget-token").addEventListener("click", forgetToken);
    $("refresh").addEventListener("click", refresh);
    $("search-form").addEventListener("submit", search);
    $("first-page").addEventListener("click", firstPage);
    $("next-page").addEventListener("click", nextPage);
    $("page-size").addEventListener("change", changePageSize);
    $("detail-close").addEventListener("click", closeDetail);
    $("patch-apply").addEventListener("click", () => guarded(applyPatch));
    $("delete-start").addEventListener("click", startDelete);
    $("delete-no").addEventListener("click", resetDelete);
    $("delete-yes").addEventListener("click", () => guarded(confirmDelete));
    $("user-form").addEventListener("submit", showUser);
    $("user-clear").addEventListener("click", allSessions);
    $("revoke-start").addEventListener("click", startRevoke);
    $("revoke-no").addEventListener("click", resetRevoke);
    $("revoke-yes").addEventListener("click", () => guarded(confirmRevoke));
    state.limit = Number($("page-size").value) || 25;
    start();
  });
})();
