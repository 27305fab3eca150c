"""Print pip constraints that keep the Python stack QGIS was built against exactly as installed
(aid_xai_plugin/install/pins.py; the dependency dialog and `python -m aid_xai_plugin.install` use
the same). Run it with the interpreter QGIS uses (Debian: /usr/bin/python3):

    python3 scripts/system_constraints.py > qgis-constraints.txt
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aid_xai_plugin.install.pins import VirtualEnvironmentError, system_constraints_text  # noqa: E402

if __name__ == "__main__":
    try:
        sys.stdout.write(system_constraints_text())
    except VirtualEnvironmentError as error:
        sys.exit(str(error))
