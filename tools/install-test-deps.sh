#!/bin/sh
# Installs what the test suite needs on a fresh machine: netspec (editable) with its test extras,
# PyTorch 2.13.0 CPU (a test oracle, never a runtime dependency), Graphviz's `dot` (the render
# tests) and jq (docs/LANGUAGE.md's piped examples are run as written).
set -e
missing=""
command -v dot >/dev/null 2>&1 || missing="$missing graphviz"
command -v jq >/dev/null 2>&1 || missing="$missing jq"
if [ -n "$missing" ]; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq $missing >/dev/null
    else
        echo "please install$missing (https://graphviz.org/download/, https://jqlang.org/): the render and docs tests need them" >&2
        exit 1
    fi
fi
python -m pip install -q -e ".[test]"
