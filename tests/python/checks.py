"""What the interop scripts share: one-line checks and a tiny HTTP app."""

import http.server
import sys
import threading
import urllib.error
import urllib.request


def check(condition, message):
    """Prints `ok: message`, or `FAIL: message` and exits 1."""
    if not condition:
        print("FAIL:", message, flush=True)
        sys.exit(1)
    print("ok:", message, flush=True)


def serve_http(port, answer):
    """An HTTP/1.1 server on 127.0.0.1:port; `answer(handler)` gives the body of a GET."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = answer(self).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def get(url, timeout=5):
    """(status, body); HTTP error statuses are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
