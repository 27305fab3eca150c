#!/usr/bin/env python3
"""Check a plugin zip against plugins.qgis.org's upload rules (its validator in the
QGIS-Plugins-Website repository, qgis-app/plugins/validator.py, 2026), and this plugin's own: every
problem on one line each, exit status 1 if there is any.

    python3 scripts/check_plugin_zip.py aid_xai.zip

The website's checks that need the network (its HEAD requests to tracker, repository and homepage)
are not made here; the URLs' form is. MAINTAINER placeholders (example.org e-mail, aid-xai URLs) must
stay marked with a "# MAINTAINER" comment in metadata.txt, and are reported as a reminder.
"""

import configparser
import re
import sys
import zipfile
from urllib.parse import urlparse

MAX_BYTES = 25_000_000  # PLUGIN_MAX_UPLOAD_SIZE
REQUIRED = ("name", "description", "version", "qgisMinimumVersion", "author", "email", "about", "tracker", "repository")
FORBIDDEN_FOLDERS = ("__MACOSX", ".git", "__pycache__")
COMPILED = (".pyc", ".pyo", ".so", ".pyd", ".dll", ".dylib", ".exe")
PLACEHOLDER_URLS = {"tracker": "http://bugs", "repository": "http://repo", "homepage": "http://homepage"}
VERSION = re.compile(r"^\d+\.\d+(\.\d+)?$")
PLUGIN_FILES = ("requirements.txt", "constraints.txt")  # the dependency installer reads them from the plugin folder


def problems_and_reminders(path):
    problems, reminders = [], []
    size = __import__("os").path.getsize(path)
    if size > MAX_BYTES:
        problems.append(f"File is too big: {size / 1e6:.1f} MB, the plugin repository takes at most {MAX_BYTES / 1e6:.0f} MB")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        return [f"Could not unzip {path}"], reminders
    with archive:
        names = archive.namelist()
        for name in names:
            if ".." in name or name.startswith("/") or "\\" in name or re.match(r"^[A-Za-z]:", name):
                problems.append(f"the zip must not contain path information (found '{name}')")
            if name.lower().endswith(COMPILED) or ".pyc" in name:
                problems.append(f"compiled file in the zip: '{name}' (the repository takes source only)")
            for folder in FORBIDDEN_FOLDERS:
                if folder in name.split("/")[:-1] or name.rstrip("/").split("/")[-1] == folder and name.endswith("/"):
                    problems.append(f"the zip must not contain a '{folder}' directory (found at '{name}')")
        bad = archive.testzip()
        if bad:
            problems.append(f"Bad zip (maybe a CRC error) on file {bad}")
        roots = sorted({name.split("/")[0] for name in names})
        if not names or "/" not in names[0]:
            return problems + ["the zip has no top-level plugin folder"], reminders
        package = names[0].split("/")[0]
        if len(roots) > 1:
            problems.append(f"more than one top-level folder: {', '.join(roots)}")
        if not package.isidentifier() or not re.match(r"^[A-Za-z][A-Za-z0-9-_]+$", package):
            problems.append(f"top-level folder '{package}' must be a valid Python identifier starting with a letter")
        for required in ("__init__.py", "LICENSE", "metadata.txt", *PLUGIN_FILES):
            if f"{package}/{required}" not in names:
                problems.append(f"'{package}/{required}' is missing")
        if f"{package}/metadata.txt" not in names:
            return problems, reminders
        text = archive.read(f"{package}/metadata.txt").decode("utf-8")
    metadata = configparser.ConfigParser(interpolation=None)
    try:
        metadata.read_string(text)
        general = metadata["general"]
    except (configparser.Error, KeyError) as error:
        return problems + [f"Errors parsing metadata.txt: {error}"], reminders
    missing = [key for key in REQUIRED if not general.get(key, "").strip()]
    if missing:
        problems.append(f"metadata.txt lacks {', '.join(missing)}")
    if "/" in general.get("author", ""):
        problems.append("Author name cannot contain slashes")
    if not VERSION.match(general.get("version", "")):
        problems.append(f"version '{general.get('version')}' is not like 1.2.3")
    for key, placeholder in PLACEHOLDER_URLS.items():
        url = general.get(key, "").strip()
        parsed = urlparse(url)
        if url == placeholder or (url or key != "homepage") and not (parsed.scheme in ("http", "https") and parsed.netloc):
            problems.append(f"metadata.txt: '{key}' must be a http(s) URL (is '{url}')")
    icon = general.get("icon", "").strip().lstrip("./")
    if not icon or f"{package}/{icon}" not in names:
        problems.append(f"the icon '{icon}' named in metadata.txt is not in the zip")
    placeholders = [key for key in ("email", "tracker", "repository", "homepage") if "example.org" in general.get(key, "") or "github.com/aid-xai/" in general.get(key, "")]
    if placeholders:
        if "# MAINTAINER" not in text:
            problems.append(f"metadata.txt has placeholder values ({', '.join(placeholders)}) without a '# MAINTAINER' note")
        else:
            reminders.append(f"MAINTAINER: replace the placeholder {', '.join(placeholders)} in metadata.txt before publishing")
    return problems, reminders


def main():
    problems, reminders = problems_and_reminders(sys.argv[1])
    for line in reminders:
        print(line)
    for line in problems:
        print(f"{sys.argv[1]}: {line}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
