"""Where the per-tile steps run: in this process (`local`) or on a Dask cluster (`dask`).

Both hand results back in the order the work was given, so the pipelines' sinks write exactly what
a local run writes. On Dask every task is a plain function of plain values (an `ExplainJob` or
`ClassifyJob` and tile windows): each worker process opens the raster and loads the model itself,
once per job (GDAL handles and torch models don't travel), and only arrays come back. At most a
few tasks per worker thread are in flight, so memory stays flat however many tiles there are; a
worker that dies has its tasks recomputed by another (Dask does that for pure tasks); Cancel
cancels what is outstanding.

Local workers are started only when a run asks for them, never at import time, and with this
Python interpreter named explicitly: inside QGIS `sys.executable` can be the QGIS binary itself, and
spawning it would open QGIS windows (QGIS issue #45646).
"""

import collections
import contextlib
import dataclasses
import hashlib
import os
import pickle
import sys
import threading

from ..common.errors import AidXaiError
from ..common.shared_setting import SharedSetting
from ..geo.remote import forget_cached, is_network_path
from ..ml.model_source import cached_model, is_model_url
from .checkpoint import file_identity

EXECUTION_MODES = ("local", "dask")
TASKS_PER_WORKER_THREAD = 3  # queued on each worker thread: busy without a backlog of results
CANCEL_CHECK_S = 0.5  # longest wait for a result between two checks of Cancel


@dataclasses.dataclass(frozen=True)
class DaskSettings:
    scheduler: str = ""  # empty: start a LocalCluster for this run; else e.g. tcp://host:8786
    workers: int = 2  # LocalCluster worker processes
    threads: int = 1  # threads per LocalCluster worker (and torch threads per task)
    timeout: float = 30.0  # seconds to reach a scheduler or start the cluster


def python_interpreter():
    """This environment's Python interpreter (not the QGIS binary `sys.executable` may name)."""
    folder = "" if os.name == "nt" else "bin"
    for name in ("python.exe", "python3.exe") if os.name == "nt" else (f"python{sys.version_info[0]}.{sys.version_info[1]}", "python3", "python"):
        candidate = os.path.join(sys.prefix, folder, name)
        if os.path.isfile(candidate):
            return candidate
    if os.path.basename(sys.executable).lower().startswith("python"):
        return sys.executable
    raise AidXaiError(f"No Python interpreter found in {sys.prefix}; Dask workers need one to start. Give DASK_SCHEDULER of a running cluster instead.")


def import_distributed():
    try:
        import distributed
    except ImportError:
        raise AidXaiError("EXECUTION=dask needs the 'dask' and 'distributed' packages: pip install dask distributed (in the Python that runs QGIS), or use EXECUTION=local.") from None
    return distributed


@contextlib.contextmanager
def dask_client(settings, progress=None):
    """A distributed.Client for the run: on a LocalCluster started (and shut down) here, or on the
    running scheduler `settings.scheduler`."""
    distributed = import_distributed()
    if settings.scheduler:
        try:
            client = distributed.Client(settings.scheduler, timeout=settings.timeout, set_as_default=False)
        except (OSError, TimeoutError) as error:
            raise AidXaiError(
                f"Could not reach the Dask scheduler at {settings.scheduler} within {settings.timeout:g} s ({error}). Start it with `dask scheduler` and workers with `dask worker {settings.scheduler}`, or leave DASK_SCHEDULER empty for a local cluster."
            ) from None
        with client:
            try:
                client.wait_for_workers(1, timeout=settings.timeout)
            except TimeoutError:
                raise AidXaiError(f"The Dask scheduler at {settings.scheduler} has no workers after {settings.timeout:g} s; start some with `dask worker {settings.scheduler}`.") from None
            if progress:
                progress.log(f"Dask: scheduler {settings.scheduler}, {len(client.scheduler_info().get('workers', {}))} worker(s).")
            yield client
        return
    if settings.workers < 1 or settings.threads < 1:
        raise AidXaiError("DASK_WORKERS and DASK_THREADS must be at least 1.")
    with _SPAWN_EXECUTABLE.held(python_interpreter()):  # for the run only: also restarts of dead workers
        with _worker_environment(settings.threads):
            cluster = distributed.LocalCluster(n_workers=settings.workers, threads_per_worker=settings.threads, processes=True, dashboard_address=":0", host="127.0.0.1", timeout=settings.timeout)
        with cluster, distributed.Client(cluster, set_as_default=False) as client:
            if progress:
                progress.log(f"Dask: local cluster of {settings.workers} worker process(es) × {settings.threads} thread(s).")
            yield client


def _spawn_executable():
    import multiprocessing.spawn

    return os.fsdecode(multiprocessing.spawn.get_executable())


def _set_spawn_executable(path):
    import multiprocessing.spawn

    multiprocessing.spawn.set_executable(path)


# process-wide: two local clusters at once (two runs in one QGIS) share it, and the last gives it back
_SPAWN_EXECUTABLE = SharedSetting(_spawn_executable, _set_spawn_executable)


def _worker_environment(threads):
    """The environment the nanny gives local workers: its default MALLOC_TRIM_THRESHOLD_=65536 makes
    glibc hand torch's buffers back to the system after every call (measured: each tile took twice
    as long as in a worker without it); thread variables as the run asks."""
    import dask

    return dask.config.set({"distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}})


def run_ordered(client, function, argument_lists, progress=None):
    """Yield function(*arguments) for each entry of `argument_lists`, computed on the cluster, in
    order; a task's error (a worker's AidXaiError, Dask's KilledWorker) is raised when its turn comes.
    Progress counts finished tasks; Cancel cancels the outstanding ones."""
    workers = client.scheduler_info().get("workers", {})
    slots = sum(worker.get("nthreads", 1) for worker in workers.values()) or 1
    window = max(2, slots * TASKS_PER_WORKER_THREAD)
    argument_lists = iter(argument_lists)
    pending = collections.deque()
    try:
        while True:
            while len(pending) < window:
                arguments = next(argument_lists, None)
                if arguments is None:
                    break
                pending.append(client.submit(function, *arguments, pure=False))
            if not pending:
                return
            result = _result(pending[0], progress)  # still outstanding (cancelled on Cancel) until it is in
            pending.popleft()
            yield result
    finally:
        if pending:
            client.cancel(list(pending))


def _result(future, progress):
    """`future`'s result (or its task's error), checking Cancel at least every CANCEL_CHECK_S while
    the task runs.

    Woken by the future's done-callback. Not distributed.wait(timeout=…): it waits through the
    process's default client, which runs never set (a QGIS session may hold another), and making ours
    current (Client.as_current) sets dask's global scheduler setting, which two runs at once can leave
    changed. Not Future.result(timeout=…) in a loop: its timeout error holds the future in a reference
    cycle, which kept a finished task's result on the cluster until Python's next garbage collection."""
    finished = threading.Event()
    future.add_done_callback(lambda _: finished.set())
    while True:
        if progress:
            progress.check_cancel()
        if finished.wait(CANCEL_CHECK_S):
            return future.result()


_WORKER_LOCK = threading.Lock()
_WORKER_STEPS = {}  # in a worker process: thread → (job key, the job's opened step); one job at a time
_TORCH_THREADS = [None]


def job_key(job):
    """What identifies a job's step on the workers: its values (the model's SHA-256 among them) and
    the raster's identity (a file's size and time, or those a URL's server reports), so a retrained
    model or a rewritten raster at the same path or URL is never served stale."""
    return hashlib.sha256(pickle.dumps((job, file_identity(job.inputs.raster_path)))).hexdigest()


def step_for(key, job, make_step, threads):
    """The step for `job` in this worker thread, opened once per job: raster, model and engine are
    reused by every task of the job, and dropped when a thread moves on to another job (a long-lived
    cluster serves many runs). Engines keep per-tile state, so each thread has its own. Missing
    inputs name the worker and the path; a model file whose content is not the run's model (another
    copy on this machine, or replaced during the run) is refused. A raster on the network is opened
    afresh (nothing an earlier job cached of it); a model given by URL comes from this machine's model
    cache, downloaded once and checked against the run's SHA-256."""
    thread = threading.get_ident()
    with _WORKER_LOCK:
        if _TORCH_THREADS[0] != threads:  # Dask's nanny sets OMP/MKL threads to 1: use the run's
            import torch

            torch.set_num_threads(threads)
            _TORCH_THREADS[0] = threads
        current = _WORKER_STEPS.get(thread)
        if current is not None and current[0] == key:
            return current[1]
        _WORKER_STEPS.pop(thread, None)
        for path, what in ((job.model_path, "model"), (job.inputs.raster_path, "raster")):
            if not path.startswith("/vsi") and not is_model_url(path) and not is_network_path(path) and not os.path.exists(path):
                raise AidXaiError(f"Dask worker {_worker_name()} cannot read the {what} '{path}': the raster and the model must be readable at the same path (or URL) on every worker.")
        if is_model_url(job.model_path):
            try:
                cached_model(job.model_path, job.model_sha256)
            except AidXaiError as error:
                raise AidXaiError(f"Dask worker {_worker_name()}: {error}") from None
        forget_cached(job.inputs.raster_path)
        try:
            step = make_step(job)
        except Exception as error:  # e.g. a /vsimem/ raster only the submitting process holds
            raise AidXaiError(f"Dask worker {_worker_name()} cannot open the raster '{job.inputs.raster_path}' or the model '{job.model_path}' ({error}): both must be readable at the same path (or URL) on every worker.") from None
        if job.model_sha256 and step.classifier.sha256 != job.model_sha256:
            raise AidXaiError(
                f"Dask worker {_worker_name()} reads another model at '{job.model_path}' (SHA-256 {step.classifier.sha256[:12]}…) than the run loaded ({job.model_sha256[:12]}…): "
                "give every worker the same model file, and don't replace it during a run."
            )
        _WORKER_STEPS[thread] = (key, step)
        return step


def _worker_name():
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "(not a Dask worker)"
