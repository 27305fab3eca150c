"""Every `bin/qgis_process run` example of the README, run as written (paths moved from /tmp to a
temporary folder), in the README's order: a user copying them gets working commands on this QGIS."""

import os
import re
import shlex

import pytest
from conftest import ROOT, run_qgis_process

EXAMPLE = re.compile(r"^bin/qgis_process run .*$", re.MULTILINE)


def readme_examples():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as stream:
        return EXAMPLE.findall(stream.read())


@pytest.mark.slow
def test_readme_qgis_process_examples_run_as_written(tmp_path):
    examples = readme_examples()
    assert {shlex.split(line)[2] for line in examples} >= {f"aid_xai:{name}" for name in ("synthetic_scenes", "synthetic_mosaic", "train", "evaluate", "classify", "explain")}
    for line in examples:
        arguments = shlex.split(line.replace("/tmp/", f"{tmp_path}/"), comments=True)[1:]
        completed = run_qgis_process(*arguments)
        assert completed.returncode == 0, f"{line}\n{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}"
        assert "gdal.UseExceptions()" not in completed.stderr, completed.stderr[-2000:]
        paths = [value for value in (argument.split("=", 1)[-1] for argument in arguments) if value.startswith(str(tmp_path))]
        missing = [path for path in paths if not os.path.exists(path)]  # inputs exist; outputs must now
        assert not missing, f"{line}: nothing at {missing}"
