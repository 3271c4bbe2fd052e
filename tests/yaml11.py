#!/usr/bin/env python3
"""Reads YAML as kubectl and Helm do: YAML 1.1, through PyYAML.

kubectl and Helm parse with sigs.k8s.io/yaml, a fork of go-yaml v2, which
resolves plain scalars by YAML 1.1 rules: `Off`, `yes` and `y` are booleans,
`0755` is octal and `1_000` an integer. PyYAML follows the same rules except
for `y`/`n` (go-yaml's addition), which this loader adds. The Rust parser
(serde_yaml) follows YAML 1.2, where all of those are strings, so a file that
means one thing to the tests and another to kubectl shows up as a difference.

    tests/yaml11.py FILE...    prints {"FILE": [document, ...], ...} as JSON
    tests/yaml11.py -          reads one YAML stream from standard input

Values JSON cannot hold are written so that no YAML 1.2 reading equals them:
a timestamp as "!!timestamp 2026-01-02", a non-string key as "!!int 1".
"""

import datetime
import json
import re
import sys

import yaml


class Loader(yaml.SafeLoader):
    """PyYAML's YAML 1.1 resolver plus go-yaml v2's one-letter booleans."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN")
)


def _bool(loader, node):
    value = loader.construct_scalar(node)
    return value in ("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON")


Loader.add_constructor("tag:yaml.org,2002:bool", _bool)


def tagged(kind, value):
    return f"!!{kind} {value}"


def plain(value):
    """The document as JSON, with non-JSON values marked."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                key = tagged(type(key).__name__, key)
            out[key] = plain(item)
        return out
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, (datetime.date, datetime.datetime)):
        return tagged("timestamp", value.isoformat())
    if isinstance(value, bytes):
        return tagged("binary", value.hex())
    if isinstance(value, set):
        return tagged("set", sorted(map(str, value)))
    if isinstance(value, float) and value != value:
        return tagged("float", "nan")
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return tagged("float", value)
    return value


def load(stream):
    return [plain(doc) for doc in yaml.load_all(stream, Loader=Loader)]


def main(paths):
    if paths == ["-"]:
        json.dump(load(sys.stdin.read()), sys.stdout)
        return
    out = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            out[path] = load(f.read())
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
