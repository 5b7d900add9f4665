"""A WSGI app behind session-proxy through examples/python/session_proxy_wsgi.py, for
tests/it/python.rs: each path exercises one thing the adapter must send right.

Usage: python3 app.py [--jwks URL_OR_FILE --audience AUD]  (prints "serving on
http://127.0.0.1:PORT"). With --jwks, the adapter verifies X-Session-Assertion and refuses a
request without a valid one (403); the body then also holds the claims and the headers the
assertion was checked against, so a test can replay them.
"""

import argparse

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "examples", "python"))

from counter_app import serve  # noqa: E402
from session_proxy_wsgi import SessionMiddleware  # noqa: E402


def application(environ, start_response):
    session = environ["werkzeug.session"]
    path = environ["PATH_INFO"]
    if path == "/slow-a":
        time.sleep(0.5)  # the request that started first answers last
        session["a"] = 1
    elif path == "/b":
        session["b"] = 2
    elif path == "/login":
        session["user"] = "ada"
        session.regenerate()
    elif path == "/logout":
        session.destroy()
    elif path == "/clear":
        session.clear()
        session["fresh"] = True
    elif path == "/cart":
        # Changed in place: werkzeug would not notice without `modified = True`.
        session.setdefault("cart", []).append("book")
    elif path == "/prefs":
        session["prefs"] = {"theme": "dark", "lang": "en"}
    elif path == "/prefs-drop":
        del session["prefs"]["lang"]
    elif path == "/null":
        session["nothing"] = None
    elif path == "/unicode":
        session["name"] = "Zoë 🐍"
    elif path == "/remember":
        session["user"] = "ada"
        session.remember("30d")
    elif path == "/forget":
        session.remember(0)
    elif path.startswith("/signout/"):
        session.revoke(path[len("/signout/"):])
    body = json.dumps(
        {
            "assertion": environ.get("session_proxy.assertion"),
            "headers": {
                name: environ.get("HTTP_" + name.upper().replace("-", "_"))
                for name in ["X-Session", "X-Session-Id", "X-Session-New", "X-Session-Assertion", "X-Request-Id"]
            },
            "sid": session.sid,
            "handle": session.handle,
            "new": session.new,
            "modified": session.modified,
            "should_save": session.should_save,
            "data": dict(session),
            "devices": session.devices,
        }
    ).encode("utf-8")
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jwks")
    parser.add_argument("--audience")
    args = parser.parse_args()
    serve(SessionMiddleware(application, jwks=args.jwks, audience=args.audience), 0)
