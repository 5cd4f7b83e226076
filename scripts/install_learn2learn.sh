#!/usr/bin/env bash
# Builds and installs learn2learn 0.2.0 into the given Python's environment.
# Its sdist ships Cython output too old for Python 3.11 (it includes longintrepr.h), so we
# regenerate the C files with a current Cython before building.
set -euo pipefail
python=${1:?usage: install_learn2learn.sh PYTHON}
version=0.2.0
if "$python" -c "import importlib.metadata as m, sys; sys.exit(m.version('learn2learn') != '$version')" 2>/dev/null; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip install -q "cython>=3" setuptools wheel numpy
"$python" -m pip download -q --no-deps --no-binary :all: "learn2learn==$version" -d "$work"
tar -xzf "$work/learn2learn-$version.tar.gz" -C "$work"
src="$work/learn2learn-$version"
"$python" -m cython -3 "$src"/learn2learn/data/*.pyx
# gsutil (a Google Cloud CLI) is only used by learn2learn to download datasets we do not use.
sed -i "/'gsutil',/d" "$src/setup.py"
"$python" -m pip install -q --no-build-isolation "$src"
