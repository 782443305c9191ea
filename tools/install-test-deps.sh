#!/bin/sh
# Installs what the test suite needs on a fresh machine: netspec (editable) with its test extras,
# PyTorch 2.13.0 CPU (a test oracle, never a runtime dependency) and Graphviz's `dot`.
set -e
if ! command -v dot >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq graphviz >/dev/null
    else
        echo "please install Graphviz (https://graphviz.org/download/): the render tests need dot" >&2
        exit 1
    fi
fi
python -m pip install -q -e ".[test]"
