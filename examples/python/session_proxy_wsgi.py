"""Sessions for a WSGI app behind session-proxy, with werkzeug's SessionMiddleware face.

One file, standard library only. Put it next to your app and swap one line:

    # before: werkzeug keeps the sessions itself
    app = SessionMiddleware(app, FilesystemSessionStore())
    # after: session-proxy keeps them; this only speaks its header protocol
    from session_proxy_wsgi import SessionMiddleware
    app = SessionMiddleware(app)

``environ['werkzeug.session']`` is then a dict subclass with ``sid``, ``new``, ``modified`` and
``should_save``, built from the request headers the proxy adds (``X-Session``,
``X-Session-Id``, ``X-Session-New``), and ``handle``: the session's public name
(``X-Session-Handle``, the SHA-256 of the id), which the proxy's stores, admin API and audit log
know it by. Show or log the handle, never ``sid``: the id is the user's credential. When the app answers, the changes go back as headers:

- only the keys that changed or were deleted, as a JSON merge patch (``X-Session-Update``), so
  two concurrent requests that change different keys both keep their change (werkzeug's
  middleware writes the whole session back, and the later request wins);
- the whole data (``X-Session-Replace``) when the app called ``clear()``;
- ``destroy()`` and ``regenerate()`` (at login, against session fixation) as
  ``X-Session-Destroy`` and ``X-Session-Regenerate``;
- ``remember("30d")`` ("keep me signed in": a persistent cookie and that idle timeout; ``0``
  back to the defaults) as ``X-Session-Remember``, and ``revoke(handle)`` (sign out one other
  device of the same user, or ``"others"``/``"all"``) as ``X-Session-Revoke``.

On a ``session.devices_path`` request, ``devices`` is the user's live sessions (the parsed
``X-Session-Devices``: ``handle``, ``created_at``, ``last_seen``, ``created_ip``, ``last_ip``,
``user_agent``, ``current``); elsewhere ``None``.

Changes are found by comparing the session with what the request brought, so a value changed
in place (``session['cart'].append(...)``) is sent too; werkzeug needed ``modified = True`` for
that. As with werkzeug's middleware, the headers are written when the app calls
``start_response``: a change made after that (while the body is produced) is not sent.

With ``jwks=`` (the proxy's JWKS: its URL, e.g. ``http://127.0.0.1:9090/.well-known/jwks.json``
on the admin listener, a file ``session-proxy assertion jwks`` wrote, or the parsed dict) and
``audience=`` (the proxy's ``[assertion] audience``), every request must carry a valid
``X-Session-Assertion`` (``[assertion]`` in the proxy): signed by one of the keys, not expired,
for this audience and issuer, and bound to the headers it came with (``sid`` is the SHA-256 of
``X-Session-Id``, ``sdh`` that of the exact ``X-Session`` value, ``new`` and ``rid`` match). A
request without one, or with one that fails any check, is refused with 403 and the app is not
called, so a request that reached the app some other way than through the proxy cannot forge a
session. The claims are in ``environ['session_proxy.assertion']``. Verifying needs PyJWT and
cryptography (``pip install PyJWT cryptography``); without ``jwks`` nothing beyond the standard
library is used.
"""

import base64
import hashlib
import json

__all__ = [
    "AssertionRefused",
    "AssertionVerifier",
    "Session",
    "SessionMiddleware",
    "decode_session",
    "encode_instruction",
]


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


def decode_devices(header):
    """The user's sessions from an ``X-Session-Devices`` value (base64url JSON of a list), or
    ``None`` when the request has none."""
    if not header:
        return None
    raw = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
    devices = json.loads(raw.decode("utf-8"))
    if not isinstance(devices, list):
        raise ValueError("X-Session-Devices does not hold a JSON list")
    return devices


def encode_instruction(data):
    """An ``X-Session-Update``/``-Replace`` value: base64url JSON, which survives any header
    encoding (WSGI headers are latin-1; session data may be any Unicode)."""
    text = _canonical(data).encode("utf-8")
    return base64.urlsafe_b64encode(text).decode("ascii").rstrip("=")


class Session(dict):
    """A dict with werkzeug's ``Session`` attributes, that knows what changed since the request
    brought it."""

    def __init__(self, data, sid, new=False, handle=None, devices=None):
        dict.__init__(self, data)
        self.sid = sid
        self.handle = handle
        self.new = new
        # The user's live sessions (``X-Session-Devices``, on a ``session.devices_path``
        # request): a list of dicts, ``current`` true for this one; ``None`` elsewhere.
        self.devices = devices
        # What the request brought, as canonical text per key and as a deep copy, to find
        # every change later (in-place ones included).
        self._loaded = {key: _canonical(value) for key, value in data.items()}
        self._before = json.loads(_canonical(data))
        self._cleared = False
        self._destroyed = False
        self._regenerate = False
        self._marked = False
        self._remember = None
        self._revoke = None

    # werkzeug's `modified`: true once the app changed anything (or said so by hand).
    @property
    def modified(self):
        return (
            self._marked
            or self._cleared
            or self._destroyed
            or self._regenerate
            or self._remember is not None
            or bool(self.changes())
        )

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

    def remember(self, duration):
        """"Keep me signed in": a persistent cookie and this idle timeout (``"30d"``, or whole
        seconds; capped by the proxy's ``session.remember_max``). ``0`` returns the session to
        the proxy's defaults."""
        if isinstance(duration, bool) or not isinstance(duration, (int, str)):
            raise TypeError("remember() takes a duration like \"30d\" or whole seconds")
        if isinstance(duration, int) and duration < 0:
            raise ValueError("remember() takes a duration of zero or more")
        self._remember = str(duration)

    def revoke(self, handle):
        """End one other session of the same user (by its ``handle``, as ``devices`` lists
        them), or ``"others"``/``"all"``; the proxy refuses another user's."""
        self._revoke = handle

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
        revoke = [] if self._revoke is None else [(prefix + "-Revoke", self._revoke)]
        if self._destroyed:
            return [(prefix + "-Destroy", "1")] + revoke
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
        if self._remember is not None:
            out.append((prefix + "-Remember", self._remember))
        return out + revoke


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


def _b64_sha256(text):
    """base64url (no padding) of the SHA-256 of a header value, as the assertion's claims hold it."""
    digest = hashlib.sha256(text.encode("latin-1")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


class AssertionRefused(Exception):
    """Why a request's ``X-Session-Assertion`` was refused."""


class AssertionVerifier(object):
    """Checks ``X-Session-Assertion`` against the proxy's JWKS (a URL, a file, or a dict)."""

    def __init__(self, jwks, audience, issuer="session-proxy"):
        try:
            import jwt  # PyJWT, with cryptography for EdDSA
        except ImportError as e:  # pragma: no cover - a deployment error, said plainly
            raise ImportError(
                "verifying X-Session-Assertion needs PyJWT and cryptography: "
                "pip install PyJWT cryptography"
            ) from e
        if not audience:
            raise ValueError("audience is required with jwks: the proxy's [assertion] audience")
        self._jwt = jwt
        self.audience = audience
        self.issuer = issuer
        self._client = None
        self._keys = None
        if isinstance(jwks, dict):
            self._keys = jwt.PyJWKSet.from_dict(jwks)
        elif jwks.startswith(("http://", "https://")):
            # Fetched on first use, cached, and fetched again when a token names an unknown
            # key (the proxy's key was rotated).
            self._client = jwt.PyJWKClient(jwks, cache_keys=False)
        else:
            with open(jwks, "rb") as f:
                self._keys = jwt.PyJWKSet.from_json(f.read().decode("utf-8"))

    def _key(self, token):
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token).key
        kid = self._jwt.get_unverified_header(token).get("kid")
        for key in self._keys.keys:
            if key.key_id == kid:
                return key.key
        raise AssertionRefused("no key with this kid")

    def verify(self, token, session, sid, new, request_id):
        """The claims of ``token`` if it is valid and bound to these header values, else raises."""
        if not token:
            raise AssertionRefused("no X-Session-Assertion")
        jwt = self._jwt
        try:
            claims = jwt.decode(
                token,
                self._key(token),
                algorithms=["EdDSA"],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sid", "sdh", "rid", "new"]},
            )
        except (jwt.PyJWTError, ValueError, KeyError) as e:
            raise AssertionRefused(str(e)) from e
        if claims["sdh"] != _b64_sha256(session):
            raise AssertionRefused("sdh: X-Session is not the value the assertion was made for")
        if claims["sid"] != _b64_sha256(sid):
            raise AssertionRefused("sid: X-Session-Id is not the session the assertion names")
        if claims["new"] is not new:
            raise AssertionRefused("new: X-Session-New does not match")
        if request_id is not None and claims["rid"] != request_id:
            raise AssertionRefused("rid: X-Request-Id does not match")
        return claims


class SessionMiddleware(object):
    """werkzeug's ``SessionMiddleware(app, store, ...)`` without the store: session-proxy, in
    front of the app, keeps the sessions and sets the cookie. Cookie settings live in the
    proxy's config (``[cookie]``), so there are none here."""

    def __init__(
        self,
        app,
        environ_key="werkzeug.session",
        header_prefix="X-Session",
        jwks=None,
        audience=None,
        issuer="session-proxy",
    ):
        self.app = app
        self.verifier = AssertionVerifier(jwks, audience, issuer) if jwks is not None else None
        self._assertion = _environ_name(header_prefix + "-Assertion")
        self.environ_key = environ_key
        self.header_prefix = header_prefix
        self._data = _environ_name(header_prefix)
        self._id = _environ_name(header_prefix + "-Id")
        self._handle = _environ_name(header_prefix + "-Handle")
        self._new = _environ_name(header_prefix + "-New")
        self._devices = _environ_name(header_prefix + "-Devices")

    def __call__(self, environ, start_response):
        new = environ.get(self._new) == "1"
        if self.verifier is not None:
            try:
                environ["session_proxy.assertion"] = self.verifier.verify(
                    environ.get(self._assertion),
                    environ.get(self._data, ""),
                    environ.get(self._id, ""),
                    new,
                    environ.get("HTTP_X_REQUEST_ID"),
                )
            except AssertionRefused as e:
                body = ("403 Forbidden: session assertion refused: %s\n" % e).encode("utf-8")
                start_response(
                    "403 Forbidden",
                    [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
                )
                return [body]
        if self._id not in environ:
            raise RuntimeError(
                "no %s header: this app must run behind session-proxy" % (self.header_prefix + "-Id")
            )
        session = Session(
            decode_session(environ.get(self._data, "")),
            environ[self._id],
            new=new,
            handle=environ.get(self._handle),
            devices=decode_devices(environ.get(self._devices)),
        )
        environ[self.environ_key] = session
        reserved = self.header_prefix.lower()

        def injecting_start_response(status, headers, exc_info=None):
            # The app may not set the protocol's headers itself: only this middleware speaks it.
            headers = [(k, v) for (k, v) in headers if not k.lower().startswith(reserved)]
            headers.extend(session.headers(self.header_prefix))
            return start_response(status, headers, exc_info)

        return self.app(environ, injecting_start_response)
