#!/usr/bin/env bash
# Print the path of a uv binary, installing uv from PyPI when the machine has none.
set -eu
if command -v uv >/dev/null 2>&1; then command -v uv; exit 0; fi
for c in "$HOME/.local/bin/uv" /usr/local/bin/uv; do [ -x "$c" ] && { echo "$c"; exit 0; }; done
python3 -m pip install --quiet --disable-pip-version-check uv >&2 || python3 -m pip install --quiet --user uv >&2
if command -v uv >/dev/null 2>&1; then command -v uv; else echo "$HOME/.local/bin/uv"; fi
