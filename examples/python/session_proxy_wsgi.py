"""Sessions for a WSGI app behind session-proxy, with werkzeug's SessionMiddleware face.

One file, standard library only. Put it next to your app and swap one line:

    # before: werkzeug keeps the sessions itself
    app = SessionMiddleware(app, FilesystemSessionStore())
    # after: session-proxy keeps them; this only speaks its header protocol
    from session_proxy_wsgi import SessionMiddleware
    app = SessionMiddleware(app)

``environ['werkzeug.session']`` is then a dict subclass with ``sid``, ``new``, ``modified`` and
``should_save``, built from the request headers the proxy adds (``X-Session``,
``X-Session-Id``, ``X-Session-New``). When the app answers, the changes go back as headers:

- only the keys that changed or were deleted, as a JSON merge patch (``X-Session-Update``), so
  two concurrent requests that change different keys both keep their change (werkzeug's
  middleware writes the whole session back, and the later request wins);
- the whole data (``X-Session-Replace``) when the app called ``clear()``;
- ``destroy()`` and ``regenerate()`` (at login, against session fixation) as
  ``X-Session-Destroy`` and ``X-Session-Regenerate``.

Changes are found by comparing the session with what the request brought, so a value changed
in place (``session['cart'].append(...)``) is sent too; werkzeug needed ``modified = True`` for
that. As with werkzeug's middleware, the headers are written when the app calls
``start_response``: a change made after that (while the body is produced) is not sent.
"""

import base64
import json

__all__ = ["Session", "SessionMiddleware", "decode_session", "encode_instruction"]


def _canonical(value):
    """The JSON text the proxy stores: compact, keys sorted, UTF-8 (not \\u escapes)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def decode_session(header):
    """The session data from an ``X-Session`` value: base64url of a JSON object, no padding."""
    if not header:
        return {}
    raw = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("X-Session does not hold a JSON object")
    return data


def encode_instruction(data):
    """An ``X-Session-Update``/``-Replace`` value: base64url JSON, which survives any header
    encoding (WSGI headers are latin-1; session data may be any Unicode)."""
    text = _canonical(data).encode("utf-8")
    return base64.urlsafe_b64encode(text).decode("ascii").rstrip("=")


class Session(dict):
    """A dict with werkzeug's ``Session`` attributes, that knows what changed since the request
    brought it."""

    def __init__(self, data, sid, new=False):
        dict.__init__(self, data)
        self.sid = sid
        self.new = new
        # What the request brought, as canonical text per key and as a deep copy, to find
        # every change later (in-place ones included).
        self._loaded = {key: _canonical(value) for key, value in data.items()}
        self._before = json.loads(_canonical(data))
        self._cleared = False
        self._destroyed = False
        self._regenerate = False
        self._marked = False

    # werkzeug's `modified`: true once the app changed anything (or said so by hand).
    @property
    def modified(self):
        return self._marked or self._cleared or self._destroyed or self._regenerate or bool(self.changes())

    @modified.setter
    def modified(self, value):
        self._marked = bool(value)

    @property
    def should_save(self):
        """werkzeug 0.6+: saved only when modified."""
        return self.modified

    def clear(self):
        dict.clear(self)
        self._cleared = True

    def destroy(self):
        """Delete the session; the proxy expires the cookie."""
        dict.clear(self)
        self._destroyed = True

    def regenerate(self):
        """Move the session to a new id (do it at login)."""
        self._regenerate = True

    def changes(self):
        """The merge patch (RFC 7396) from what the request brought to what the session holds
        now: changed and new keys with their values, deleted keys as ``None``; an object that
        changed inside is patched inside, so a key removed from it goes too."""
        patch = {}
        for key, value in self.items():
            if self._loaded.get(key) != _canonical(value):
                patch[key] = _diff(self._before.get(key), value)
        for key in self._loaded:
            if key not in self:
                patch[key] = None
        return patch

    def headers(self, prefix="X-Session"):
        """The response headers that carry this request's changes to the proxy."""
        if self._destroyed:
            return [(prefix + "-Destroy", "1")]
        out = []
        patch = None if self._cleared else self.changes()
        if patch is None or not _patchable(self):
            # A merge patch cannot store a null (null means "remove"): a session that holds
            # one anywhere goes whole, exact, at the price of concurrent changes to other keys.
            if self._cleared or patch:
                out.append((prefix + "-Replace", encode_instruction(dict(self))))
        elif patch:
            out.append((prefix + "-Update", encode_instruction(patch)))
        if self._regenerate:
            out.append((prefix + "-Regenerate", "1"))
        return out


def _diff(before, after):
    """The merge patch that turns ``before`` into ``after``."""
    if not (isinstance(before, dict) and isinstance(after, dict)):
        return after
    patch = {}
    for key, value in after.items():
        if key not in before or _canonical(before[key]) != _canonical(value):
            patch[key] = _diff(before.get(key), value)
    for key in before:
        if key not in after:
            patch[key] = None
    return patch


def _holds_null(value):
    """Whether a merge patch would read part of ``value`` as "remove": a null as a member
    value, at any depth of objects. (A list is replaced whole, nulls and all.)"""
    if value is None:
        return True
    if isinstance(value, dict):
        return any(_holds_null(v) for v in value.values())
    return False


def _patchable(session):
    """Whether every changed value survives a merge patch exactly."""
    return not any(_holds_null(session[key]) for key in session.changes() if key in session)


def _environ_name(header):
    return "HTTP_" + header.upper().replace("-", "_")


class SessionMiddleware(object):
    """werkzeug's ``SessionMiddleware(app, store, ...)`` without the store: session-proxy, in
    front of the app, keeps the sessions and sets the cookie. Cookie settings live in the
    proxy's config (``[cookie]``), so there are none here."""

    def __init__(self, app, environ_key="werkzeug.session", header_prefix="X-Session"):
        self.app = app
        self.environ_key = environ_key
        self.header_prefix = header_prefix
        self._data = _environ_name(header_prefix)
        self._id = _environ_name(header_prefix + "-Id")
        self._new = _environ_name(header_prefix + "-New")

    def __call__(self, environ, start_response):
        if self._id not in environ:
            raise RuntimeError(
                "no %s header: this app must run behind session-proxy" % (self.header_prefix + "-Id")
            )
        session = Session(
            decode_session(environ.get(self._data, "")),
            environ[self._id],
            new=environ.get(self._new) == "1",
        )
        environ[self.environ_key] = session
        reserved = self.header_prefix.lower()

        def injecting_start_response(status, headers, exc_info=None):
            # The app may not set the protocol's headers itself: only this middleware speaks it.
            headers = [(k, v) for (k, v) in headers if not k.lower().startswith(reserved)]
            headers.extend(session.headers(self.header_prefix))
            return start_response(status, headers, exc_info)

        return self.app(environ, injecting_start_response)
