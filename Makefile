# AID-XAI: `make demo` (main job) and `make test` (all tests) set everything up on Debian 12 as root.
SHELL := /bin/bash
ROOT := $(abspath .)
VENV := $(ROOT)/.venv
QGIS_DIR := $(ROOT)/.qgis
PLUGIN_NAME := aid_xai
# xvfb, xauth: the desktop tests (tests/test_desktop.py) and `make screenshots` run QGIS on a virtual X screen.
SYSTEM_PACKAGES := qgis python3-qgis qgis-providers python3-gdal gdal-bin python3-rasterio python3-venv python3-pip zip unzip xvfb xauth
export QT_QPA_PLATFORM := offscreen

.PHONY: setup system venv plugin demo test test-numerics test-install test-debian qgis4-api-names screenshots zip install-user clean

setup: system venv plugin

system:
	@dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1 || { \
	  echo "Installing QGIS and GDAL from Debian's packages"; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(SYSTEM_PACKAGES); }

venv: $(VENV)/.installed

# pip must never replace the numpy/scipy/Pillow/matplotlib/… QGIS's Python was built against: their
# installed versions are read off this system (they differ between Debian releases) and pinned.
$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt scripts/system_constraints.py $(wildcard /var/lib/dpkg/status)
	test -x $(VENV)/bin/python || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	/usr/bin/python3 scripts/system_constraints.py > $(VENV)/system-constraints.txt
	$(VENV)/bin/pip install --disable-pip-version-check -q -c $(VENV)/system-constraints.txt -c constraints.txt -r requirements-dev.txt
	touch $@

# The checkout itself is the plugin folder (metadata.txt, __init__.py, resources/, aid_xai_plugin/),
# linked into a QGIS plugin path and config dir the project owns: the user's profile is never touched.
plugin:
	@mkdir -p $(QGIS_DIR)/plugins $(QGIS_DIR)/config
	@ln -sfn $(ROOT) $(QGIS_DIR)/plugins/$(PLUGIN_NAME)
	@bin/qgis_process plugins 2>/dev/null | grep -q '^\* $(PLUGIN_NAME)$$' || bin/qgis_process plugins enable $(PLUGIN_NAME)

demo: setup
	$(VENV)/bin/python scripts/demo.py --out $(ROOT)/demo_output

test: setup
	$(VENV)/bin/python -m pytest -q --durations=15 tests

# The floating-point tests again under other CPU kernels (ATen vector width, oneDNN ISA, 1/2 threads).
test-numerics: setup
	scripts/test_numerics.sh

# aid_xai.zip for plugins.qgis.org or "Install from ZIP", checked against the repository's upload rules.
zip: venv
	rm -rf build/deploy aid_xai.zip && $(VENV)/bin/pb_tool zip -q -n -p build/deploy
	$(VENV)/bin/python scripts/check_plugin_zip.py aid_xai.zip

# Install into your own QGIS desktop profile (default profile unless QGIS_PROFILE_DIR is set).
install-user: venv
	$(VENV)/bin/pb_tool deploy -y -p "$${QGIS_PROFILE_DIR:-$$HOME/.local/share/QGIS/QGIS3/profiles/default}/python/plugins"

clean:
	rm -rf $(QGIS_DIR) build aid_xai.zip demo_output .pytest_cache

# tests/data/qgis4_api.json: the names of QGIS 4's Python API the plugin uses (tests/test_qgis4_api.py).
# It needs QGIS >= 3.44, so run it as `make test-debian RELEASE=forky GOAL=qgis4-api-names` and copy
# build/debian/forky/work/aid-xai/tests/data/qgis4_api.json back (or run the script on a QGIS 4
# checkout: scripts/qgis4_api_names.py --qgis-source DIR).
PYQT6_VERSION := 6.12.1
qgis4-api-names: venv
	rm -rf build/pyqt6 && $(VENV)/bin/pip download -q --no-deps --only-binary :all: -d build/pyqt6 PyQt6==$(PYQT6_VERSION)
	$(VENV)/bin/python scripts/qgis4_api_names.py --qgis-runtime --pyqt6 build/pyqt6/*.whl > build/qgis4_api.json
	mv build/qgis4_api.json tests/data/qgis4_api.json

# Run `make test` (or GOAL=demo) in a debootstrapped Debian root of another release (as root; the
# root is cached under build/debian): RELEASE=forky (Debian 14 testing: QGIS 3.44), sid, trixie
# (Debian 13: QGIS 3.40) or bookworm (Debian 12: QGIS 3.22).
RELEASE ?= trixie
GOAL ?= test
test-debian:
	scripts/test_other_debian.sh $(RELEASE) $(GOAL)

# A clean QGIS profile installs the plugin zip and, from its dependency dialog, the full pinned package set,
# then classifies and explains from the Processing dialogs (tests/test_full_install.py; 0.4-3.2 GB).
test-install: setup
	AID_XAI_FULL_INSTALL=1 $(VENV)/bin/python -m pytest -q -s tests/test_full_install.py

# Screenshots of the classify/explain dialogs on a virtual screen (build/screenshots; fails if a choice
# is not a drop-down).
# The desktop session of tests/test_desktop.py leaves the real QGIS window's screenshots in build/desktop.
screenshots: setup
	env -u QT_QPA_PLATFORM xvfb-run -a -s "-screen 0 1280x1024x24" $(VENV)/bin/python scripts/screenshot_dialogs.py build/screenshots
