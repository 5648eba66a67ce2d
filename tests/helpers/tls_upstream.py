"""An HTTPS upstream that demands a client certificate, for the gateway's upstream mTLS
tests (Python's ssl module: an implementation independent of the gateway's rustls).

    tls_upstream.py CERT KEY CLIENT_CA [--keep-alive]
        starts on a free loopback port and prints it

Every request is answered with JSON describing the client certificate the gateway
presented, the request's cookie fields and how many connections the server has accepted:
{"uris": [...], "serial": "...", "cookies": [...], "connections": n}. A path ending in
`/slow` is answered after a second. The certificate and key are read again for each new
connection, so a test can rotate them on disk. Connections serve one request (HTTP/1.0)
unless `--keep-alive` is given (HTTP/1.1 persistent connections).
"""

import json
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CERT, KEY, CLIENT_CA = sys.argv[1:4]
KEEP_ALIVE = "--keep-alive" in sys.argv[4:]
accepted = 0
accepted_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1" if KEEP_ALIVE else "HTTP/1.0"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.endswith("/slow"):
            time.sleep(1)
        peer = self.connection.getpeercert() or {}
        uris = [v for (k, v) in peer.get("subjectAltName", ()) if k == "URI"]
        cookies = self.headers.get_all("Cookie") or []
        with accepted_lock:
            connections = accepted
        body = json.dumps({"uris": uris, "serial": peer.get("serialNumber"), "path": self.path,
                           "cookies": cookies, "connections": connections}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def get_request(self):
        global accepted
        sock, addr = super().get_request()
        with accepted_lock:
            accepted += 1
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(CERT, KEY)
        ctx.load_verify_locations(CLIENT_CA)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx.wrap_socket(sock, server_side=True), addr

    def handle_error(self, request, client_address):
        pass


if __name__ == "__main__":
    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
