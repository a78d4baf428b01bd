"""The API: items and jobs, kept in the store it finds through its link variables.

GET /health (200 once the store answers), PUT/GET /items/KEY, POST /jobs {"text": ...}
-> {"id": N}, GET /jobs/N -> the worker's result (202 while pending)."""

import itertools
import os
from http.server import ThreadingHTTPServer
from typing import Any

from common import JsonHandler, call, exit_on_sigterm

# `links: [store]` gives these (linkd's default convention); a process on the host gets
# the same from `stack.env_for_host()`.
STORE = f"http://{os.environ['LINKD_STORE_HOST']}:{os.environ['LINKD_STORE_PORT']}"
ids = itertools.count(1)


class Handler(JsonHandler):

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        try:
            if parts == ["health"]:
                status, _ = call("GET", f"{STORE}/health")
                return self.reply(200 if status == 200 else 503, {"store": status})
            if len(parts) == 2 and parts[0] == "items":
                status, value = call("GET", f"{STORE}/kv/item-{parts[1]}")
                return self.reply(status, value)
            if len(parts) == 2 and parts[0] == "jobs":
                status, value = call("GET", f"{STORE}/kv/result-{parts[1]}")
                if status == 404:
                    return self.reply(202, {"id": int(parts[1]), "status": "pending"})
                return self.reply(status, value)
        except OSError as exc:
            return self.reply(503, {"error": f"store unreachable: {exc}"})
        return self.reply(404, {"error": "unknown path"})

    def do_PUT(self) -> None:
        parts = self.path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "items":
            status, _ = call("PUT", f"{STORE}/kv/item-{parts[1]}", self.body())
            return self.reply(200 if status == 204 else 502, {"stored": parts[1]})
        return self.reply(404, {"error": "unknown path"})

    def do_POST(self) -> None:
        if self.path.strip("/") == "jobs":
            job = {"id": next(ids), "text": (self.body() or {}).get("text", "")}
            call("POST", f"{STORE}/queue/jobs", job)
            print(f"api: queued job {job['id']}")
            return self.reply(201, {"id": job["id"]})
        return self.reply(404, {"error": "unknown path"})

    def log_message(self, format: str, *args: Any) -> None:
        print(f"api: {self.command} {self.path} {args[1] if len(args) > 1 else ''}")


if __name__ == "__main__":
    exit_on_sigterm()
    server = ThreadingHTTPServer(("0.0.0.0", 8080), Handler)
    print(f"api: listening on port 8080, store at {STORE}")
    server.serve_forever()
