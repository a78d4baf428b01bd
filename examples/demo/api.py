"""An HTTP API that counts visits in the kv service, which it finds by name."""

import json
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KV_HOST, KV_PORT = os.environ["KV_ADDRESS"].rsplit(":", 1)


def kv(command: str) -> str:
    with socket.create_connection((KV_HOST, int(KV_PORT)), timeout=5) as conn:
        conn.sendall(command.encode() + b"\n")
        return conn.makefile().readline().strip()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        visits = kv("INCR visits")
        body = json.dumps(
            {
                "served_by": socket.gethostname(),
                "visits": int(visits),
                "kv": f"{KV_HOST} = {socket.gethostbyname(KV_HOST)}",
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.client_address[0]} {format % args}", flush=True)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("0.0.0.0", 8080), Handler)
    print(f"api listening on {socket.gethostname()}:8080, kv at {KV_HOST}:{KV_PORT}", flush=True)
    server.serve_forever()
