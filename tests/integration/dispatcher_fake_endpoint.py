#!/usr/bin/env python3
"""A misbehaving OpenAI-compatible endpoint for the dispatcher tests: the model named in
the request body picks the misbehaviour. Optional TLS (cert and key files).
GET /count: requests per model, and "_connections": connections accepted so far.
FAKE_IDLE_S (env): close a kept-alive connection after that many idle seconds.
usage: dispatcher_fake_endpoint.py PORT [CERT KEY]"""
import json
import os
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COUNTS = {"_connections": 0}
LOCK = threading.Lock()
MODELS = ["garbage", "ratelimited", "plain4xx", "badsse", "tls-llm", "tls-idle", "drop-reused"]


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle's algorithm and the
    # client's delayed ACK stall every answer on a kept-alive connection by ~40 ms.
    disable_nagle_algorithm = True
    timeout = float(os.environ.get("FAKE_IDLE_S", "0")) or None

    def setup(self):
        super().setup()
        self.served = 0
        with LOCK:
            COUNTS["_connections"] += 1

    def log_message(self, *a):
        pass

    def send(self, status, body, ctype="application/json", extra=None):
        b = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(b)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(b)

    def do_GET(self):
        if self.path.endswith("/v1/models"):
            self.send(200, json.dumps({"object": "list", "data": [
                {"id": m, "object": "model"} for m in MODELS]}))
        elif self.path == "/count":
            self.send(200, json.dumps(COUNTS))
        else:
            self.send(404, "{}")

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(n) or b"{}")
        model = body.get("model", "")
        with LOCK:
            COUNTS[model] = COUNTS.get(model, 0) + 1
        self.served += 1
        if model == "drop-reused" and self.served > 1:
            # An endpoint closing a kept-alive connection as the request arrives: the
            # request is read, never answered.
            self.close_connection = True
            return
        if model == "garbage":
            self.send(200, '{"id": "x", "choices": [ not json')
        elif model == "ratelimited":
            self.send(429, '{"error":{"message":"slow down","type":"rate_limit_error","code":null}}',
                      extra={"Retry-After": "30"})
        elif model == "plain4xx":
            self.send(400, "prompt too long for this deployment", ctype="text/plain")
        elif model == "badsse":
            self.send(200, 'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: <html>oops\n\n',
                      ctype="text/event-stream")
        else:
            self.send(200, json.dumps({"id": "tls", "object": "chat.completion", "choices": [],
                                       "usage": {"prompt_tokens": 3, "completion_tokens": 4,
                                                 "total_tokens": 7}}))


srv = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
if len(sys.argv) > 3:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
