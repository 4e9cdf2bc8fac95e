"""One connection to a Dask scheduler for a whole `toolchain build` (every model of it shares it, so the same
stage of two models is one task), opened on first use, with the checks that turn a cluster's silences into one
line: a scheduler that does not answer, a resource no worker offers."""

import threading
import time

from . import ClusterError, check_address


class Session:
    def __init__(self, address: str, cache_url: str, timeout_s: float):
        self.address, self.cache_url, self.timeout_s = check_address(address), cache_url, timeout_s
        self._client, self._lock = None, threading.Lock()

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self):
        import dask
        from distributed import Client

        # A client that cannot reach the scheduler must give up after the timeout (Dask retries until then).
        with dask.config.set({"distributed.comm.timeouts.connect": f"{self.timeout_s}s"}):
            try:
                return Client(self.address, timeout=self.timeout_s, set_as_default=False)
            except (OSError, TimeoutError) as e:
                detail = " ".join(str(e).split())[:200]
                raise ClusterError("cluster", f"scheduler {self.address} is unreachable after "
                                              f"{self.timeout_s:g}s ({type(e).__name__}: {detail})") from None

    def close(self):
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def offered(self) -> dict:
        """resource -> names of the workers that offer it now."""
        out = {}
        for w in self.client.scheduler_info()["workers"].values():
            for r, amount in (w.get("resources") or {}).items():
                if amount > 0:
                    out.setdefault(r, []).append(w.get("name"))
        return out

    def wait_for(self, needs: dict, model: str):
        """needs: resource -> the node labels that need it. Waits up to the timeout for a worker offering each;
        a resource still missing then is a ClusterError naming it and the targets that need it."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            missing = {r: labels for r, labels in needs.items() if r not in self.offered()}
            if not missing:
                return
            if time.monotonic() >= deadline:
                r, labels = sorted(missing.items())[0]
                targets = sorted({label.split("[", 1)[1].rstrip("]") for label in labels if "[" in label})
                raise ClusterError(labels[0].split("[")[0].split()[-1],
                                   f"no worker of {self.address} offers resource {r!r} (needed by target "
                                   f"{', '.join(targets)} of {model}); waited {self.timeout_s:g}s "
                                   f"(start one: toolchain worker --scheduler {self.address} --resources {r}=1)",
                                   targets[0] if targets else None)
            time.sleep(0.2)
