"""A tiny key-value store: one command per line, `SET key value`, `GET key`, `INCR key`."""

import signal
import socket
import socketserver
import sys

store: dict[str, str] = {}


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for raw in self.rfile:
            parts = raw.decode().split(maxsplit=2)
            if parts[:1] == ["SET"] and len(parts) == 3:
                store[parts[1]] = parts[2]
                reply = "OK"
            elif parts[:1] == ["GET"] and len(parts) == 2:
                reply = store.get(parts[1], "")
            elif parts[:1] == ["INCR"] and len(parts) == 2:
                store[parts[1]] = str(int(store.get(parts[1], "0")) + 1)
                reply = store[parts[1]]
            else:
                reply = "ERR expected SET key value | GET key | INCR key"
            self.wfile.write(reply.encode() + b"\n")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    # The stack file stops kv with SIGINT (stop_signal): leave quietly with code 0.
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    with Server(("0.0.0.0", 7000), Handler) as server:
        print(f"kv listening on {socket.gethostname()}:7000", flush=True)
        server.serve_forever()
