"""Runs that overlap in one process (two runs in one QGIS, the threads of a Dask worker, the tile
reader's thread) must neither see nor leave each other's process-wide state: numpy's global RNG that
shap draws its tie-breaks from, GDAL < 3.7's process-wide exception mode, and the interpreter
multiprocessing spawns local Dask workers with."""

import threading

import numpy as np
import pytest
from helpers import tied_classifier_and_tile
from osgeo import gdal

from aid_xai_plugin.core.explain.engine import ExplainSettings
from aid_xai_plugin.core.explain.shap_engine import ShapPartitionEngine
from aid_xai_plugin.core.common.gdal_context import gdal_exceptions
from aid_xai_plugin.core.pipelines.execution import _SPAWN_EXECUTABLE, _spawn_executable, python_interpreter


def run_together(functions):
    """Run the functions in threads that start together; their results in order (errors re-raised)."""
    start = threading.Barrier(len(functions))
    results = [None] * len(functions)

    def run(position):
        start.wait()
        try:
            results[position] = functions[position]()
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
            results[position] = error

    threads = [threading.Thread(target=run, args=(position,)) for position in range(len(functions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def test_concurrent_shap_explanations_draw_their_own_seeded_ties_and_leave_the_global_rng_alone():
    """Four threads explain the tied tile with four seeds, three rounds: each gets its seed's values
    of a run alone, bit for bit, and the process's global RNG state is the one it had before."""
    classifier, tile = tied_classifier_and_tile(7, 9)
    seeds = (0, 1, 2, 3)

    def explain(seed):
        settings = ExplainSettings(masker="0.25", max_evals=40, batch_size=4, seed=seed, output_space="probability")
        return ShapPartitionEngine().explain(tile, classifier, [0], settings).values

    alone = [explain(seed) for seed in seeds]
    assert any(not np.array_equal(alone[0], other) for other in alone[1:])  # the draws decide: a race would show
    np.random.seed(12345)
    before = np.random.get_state()
    for _ in range(3):
        together = run_together([lambda seed=seed: explain(seed) for seed in seeds])
        for seed, values, expected in zip(seeds, together, alone):
            np.testing.assert_array_equal(values, expected, err_msg=f"seed {seed}")
    after = np.random.get_state()
    assert after[0] == before[0] and np.array_equal(after[1], before[1]) and after[2:] == before[2:]


def test_a_thread_leaving_its_gdal_block_leaves_another_threads_exceptions_on():
    """With the process-wide mode off (as QGIS may keep it), thread A enters its block, then B; A
    leaves while B is inside; B's failing GDAL call must still raise (on GDAL < 3.7 the mode is one
    per process), and the mode is off again once both have left."""
    a_inside, b_inside, a_left = threading.Event(), threading.Event(), threading.Event()

    def thread_a():
        with gdal_exceptions():
            a_inside.set()
            assert b_inside.wait(30)
        a_left.set()

    def thread_b():
        assert a_inside.wait(30)
        with gdal_exceptions():
            b_inside.set()
            assert a_left.wait(30)
            with pytest.raises(RuntimeError):
                gdal.Open("/nonexistent/aid_xai/missing.tif")
        return True

    was_on = gdal.GetUseExceptions()
    gdal.DontUseExceptions()
    try:
        assert run_together([thread_a, thread_b]) == [None, True]
        assert gdal.GetUseExceptions() == 0
    finally:
        if was_on:
            gdal.UseExceptions()


def test_overlapping_local_clusters_keep_this_python_until_the_last_one_ends():
    """Two runs' local clusters overlap: when the first ends, the second's (re)spawned workers must
    still start with this Python; the last gives back the executable the host had (here a program
    that can't run Python, as the QGIS binary can't)."""
    import multiprocessing.spawn

    previous = multiprocessing.spawn.get_executable()
    multiprocessing.spawn.set_executable("/bin/false")
    first_inside, second_inside, first_left = threading.Event(), threading.Event(), threading.Event()
    interpreter = python_interpreter()
    seen = []

    def first():
        with _SPAWN_EXECUTABLE.held(interpreter):
            first_inside.set()
            assert second_inside.wait(30)
        first_left.set()

    def second():
        assert first_inside.wait(30)
        with _SPAWN_EXECUTABLE.held(interpreter):
            second_inside.set()
            assert first_left.wait(30)
            seen.append(_spawn_executable())

    try:
        run_together([first, second])
        assert seen == [interpreter]
        assert _spawn_executable() == "/bin/false"
    finally:
        multiprocessing.spawn.set_executable(previous)
