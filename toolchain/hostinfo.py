"""Facts about the machine figures were measured on (latency is a fact about a machine, not an artifact)."""

import os
import platform
from functools import lru_cache


@lru_cache(maxsize=None)
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def host() -> dict:
    return {"arch": platform.machine(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "system": platform.system(), "python": platform.python_version(), "hostname": platform.node()}


def host_id() -> str:
    """What makes two latency figures comparable: same arch, CPU model and machine name."""
    h = host()
    return f"{h['hostname']}|{h['arch']}|{h['cpu']}|{h['cpu_count']}"
