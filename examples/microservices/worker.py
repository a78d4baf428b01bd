"""The worker: takes jobs from the store's queue, writes each result back."""

import os
import time

from common import call, exit_on_sigterm

STORE = f"http://{os.environ['LINKD_STORE_HOST']}:{os.environ['LINKD_STORE_PORT']}"

if __name__ == "__main__":
    exit_on_sigterm()
    print(f"worker: ready, store at {STORE}")
    while True:
        try:
            status, job = call("POST", f"{STORE}/queue/jobs/pop")
        except OSError as exc:
            print(f"worker: store unreachable ({exc}); retrying")
            time.sleep(0.2)
            continue
        if status != 200:
            time.sleep(0.05)
            continue
        words = job["text"].split()
        result = {"id": job["id"], "upper": job["text"].upper(), "words": len(words)}
        call("PUT", f"{STORE}/kv/result-{job['id']}", result)
        print(f"worker: done job {job['id']}")
