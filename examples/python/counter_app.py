"""werkzeug's session example, behind session-proxy.

The application is the one from werkzeug's contrib/sessions documentation, unchanged; only the
middleware line differs:

    # before
    from werkzeug.contrib.sessions import SessionMiddleware, FilesystemSessionStore
    app = SessionMiddleware(application, FilesystemSessionStore())
    # after
    from session_proxy_wsgi import SessionMiddleware
    app = SessionMiddleware(application)

Run it with the standard library's server, then put the proxy in front:

    python3 examples/python/counter_app.py 5000 &
    session-proxy --upstream http://127.0.0.1:5000
    curl -c jar -b jar http://127.0.0.1:8080/    # You visited this page 1 times.
"""

import socketserver
import sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from session_proxy_wsgi import SessionMiddleware


def application(environ, start_response):
    session = environ["werkzeug.session"]
    session["visit_count"] = session.get("visit_count", 0) + 1
    start_response("200 OK", [("Content-Type", "text/html")])
    return [
        (
            "<html><head><title>Session Example</title></head>"
            "<body>You visited this page %d times.</body></html>" % session["visit_count"]
        ).encode("utf-8")
    ]


app = SessionMiddleware(application)


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref serves one request at a time; threads let concurrent requests overlap."""

    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def serve(wsgi_app, port):
    """Serves on 127.0.0.1:PORT (0 picks one) and prints the address, for scripts and tests."""
    server = make_server("127.0.0.1", port, wsgi_app, ThreadingWSGIServer, QuietHandler)
    print("serving on http://127.0.0.1:%d" % server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    serve(app, int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
