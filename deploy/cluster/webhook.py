#!/usr/bin/env python3
"""The cluster's demo webhook (scripts/cluster): receives the relay's POSTs.

POST <any path>  checks X-Pgrpc-Signature with PGRPC_RELAY_SIGNING_SECRET,
                 records the delivery, and answers 204 (401 if the
                 signature is wrong).
GET /events      every delivery so far, in arrival order, as a JSON array of
                 {event_id, event_type, aggregate_type, aggregate_id,
                 attempt, payload, signature_ok, traceparent, tracestate}.
GET /health      200.

It listens on WEBHOOK_PORT (default 8080; 0 picks a free port) and prints
the port it listens on as its first line.

Standard library only; it runs in the pgrpc-postgres image's python3.
"""
import hashlib
import hmac
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ.get("PGRPC_RELAY_SIGNING_SECRET", "").encode()
LOCK = threading.Lock()
DELIVERIES = []


def signature_ok(header, body):
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    if "t" not in parts or "v1" not in parts:
        return False
    want = hmac.new(SECRET, parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, parts["v1"])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/events":
            with LOCK:
                body = json.dumps(DELIVERIES).encode()
            self.reply(200, body)
        elif self.path == "/health":
            self.reply(200, b"{}")
        else:
            self.reply(404, b"{}")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        ok = signature_ok(self.headers.get("X-Pgrpc-Signature", ""), raw)
        try:
            event = json.loads(raw)
        except ValueError:
            self.reply(400, b"{}")
            return
        with LOCK:
            DELIVERIES.append({
                "event_id": int(self.headers.get("X-Pgrpc-Event-Id", "0")),
                "event_type": event.get("event_type"),
                "aggregate_type": event.get("aggregate_type"),
                "aggregate_id": event.get("aggregate_id"),
                "attempt": int(self.headers.get("X-Pgrpc-Attempt", "0")),
                "payload": event.get("payload"),
                "signature_ok": ok,
                "traceparent": self.headers.get("traceparent"),
                "tracestate": self.headers.get("tracestate"),
            })
        self.reply(204 if ok else 401)


if __name__ == "__main__":
    port = int(os.environ.get("WEBHOOK_PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
