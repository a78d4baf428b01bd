"""A key-value store over HTTP: GET/PUT /kv/KEY, POST /queue/NAME (push), POST
/queue/NAME/pop (204 when empty)."""

import threading
from collections import defaultdict, deque
from http.server import ThreadingHTTPServer
from typing import Any

from common import JsonHandler, exit_on_sigterm

values: dict[str, Any] = {}
queues: defaultdict[str, deque[Any]] = defaultdict(deque)
lock = threading.Lock()


class Handler(JsonHandler):

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        if parts == ["health"]:
            return self.reply(200, {"keys": len(values)})
        if len(parts) == 2 and parts[0] == "kv":
            with lock:
                if parts[1] in values:
                    return self.reply(200, values[parts[1]])
            return self.reply(404, {"error": f"no key {parts[1]}"})
        return self.reply(404, {"error": "unknown path"})

    def do_PUT(self) -> None:
        parts = self.path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "kv":
            with lock:
                values[parts[1]] = self.body()
            print(f"store: set {parts[1]}")
            return self.reply(204)
        return self.reply(404, {"error": "unknown path"})

    def do_POST(self) -> None:
        parts = self.path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "queue":
            with lock:
                queues[parts[1]].append(self.body())
            return self.reply(204)
        if len(parts) == 3 and parts[0] == "queue" and parts[2] == "pop":
            with lock:
                if queues[parts[1]]:
                    return self.reply(200, queues[parts[1]].popleft())
            return self.reply(204)
        return self.reply(404, {"error": "unknown path"})

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per change (above) is enough


if __name__ == "__main__":
    exit_on_sigterm()
    server = ThreadingHTTPServer(("0.0.0.0", 7000), Handler)
    print("store: listening on port 7000")
    server.serve_forever()
