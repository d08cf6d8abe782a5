#!/usr/bin/env python3
"""A minimal OTLP/HTTP receiver for the tests: accepts POST /v1/traces
(JSON), appends each body as one line to the file named by argv[1], and
answers 200 {}. Prints its port on the first line of stdout."""
import http.server
import sys

OUT = sys.argv[1]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        if self.path != "/v1/traces" or "json" not in self.headers.get("content-type", ""):
            self.send_response(404)
            self.end_headers()
            return
        with open(OUT, "ab") as f:
            f.write(body.replace(b"\n", b" ") + b"\n")
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
