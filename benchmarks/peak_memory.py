"""Peak resident memory of this process since it started (Linux).

`getrusage().ru_maxrss` is not used: Linux carries the parent's resident size over fork and exec into
it, so a worker started by a parent that held a large raster or torch would report the parent's
peak. `VmHWM` belongs to the worker's own address space.
"""


def peak_rss_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (this benchmark measures memory on Linux only)")
