"""What a weights file or checkpoint was saved from, so that loading it into another network
is refused saying what differs.

A network's fingerprint is its checked graph's structure (each node's name and op, and the
values it reads: the edges) and its parameter layout (the name, shape and dtype of every
parameter and state tensor, and which are state, as batch norms' running statistics). Its
hash, a SHA-256 of that as canonical JSON, and the fingerprint itself (to say what differs)
go into the metadata of every file netspec saves (keys `graph_hash` and `layout`).

Not in it, on purpose: node shapes (the same weights serve another input size, as --input
allows), attributes beyond what the parameters' shapes show, the trainable flags (--freeze
changes them) and the spec's text (comments, the train section).

    stored = read from the file's metadata (training/metadata.py checks it)
    problems = differences(stored, fingerprint(graph, dtype))   # [] when it is the same
"""

from __future__ import annotations

import hashlib
import json

MAX_SHOWN = 6            # differences named in a message before "and N more"


def fingerprint(graph, dtype: str = "float32") -> dict:
    """{"nodes": [[name, op, [inputs]]...], "tensors": {name: [shape, dtype, kind]}} of a
    checked graph whose parameters are held as `dtype`; kind is "param" or "state"."""
    nodes = [[n.name, n.op, list(n.inputs)] for n in graph.nodes()]
    tensors = {f"{n.name}.{p.name}": [list(p.shape), dtype, "param" if p.trainable else "state"]
               for n in graph.nodes() for p in n.params}
    return {"nodes": nodes, "tensors": tensors}


def fingerprint_hash(print_: dict) -> str:
    """The SHA-256 (hex) of a fingerprint as canonical JSON."""
    text = json.dumps(print_, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def metadata(graph, dtype: str = "float32") -> dict[str, str]:
    """The metadata keys a saved file gets: graph_hash and layout (JSON)."""
    fp = fingerprint(graph, dtype)
    return {"graph_hash": fingerprint_hash(fp), "layout": json.dumps(fp, separators=(",", ":"))}


def _dims(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


def differences(stored: dict, here: dict) -> list[str]:
    """What differs between a file's fingerprint and this network's, one line per layer:
    'dense f6: weight 84x10 in the file, 84x12 here', 'conv c3 missing here', 'relu1 reads
    conv1 in the file, batchnorm1 here'. Empty when they are the same (dtypes apart: a
    float32 file loads into a float64 model)."""
    old = {name: (op, inputs) for name, op, inputs in stored["nodes"]}
    new = {name: (op, inputs) for name, op, inputs in here["nodes"]}
    lines = []
    for name, (op, _) in old.items():
        if name not in new:
            lines.append(f"{op} {name} missing here")
    for name, (op, _) in new.items():
        if name not in old:
            lines.append(f"{op} {name} not in the file")
    by_node: dict[str, list[str]] = {}
    old_t, new_t = stored["tensors"], here["tensors"]
    for tensor in sorted(set(old_t) | set(new_t)):
        node, param = tensor.rsplit(".", 1)
        if node not in old or node not in new:
            continue                      # the whole layer is already named above
        if tensor not in new_t:
            by_node.setdefault(node, []).append(f"{param} in the file, none here")
        elif tensor not in old_t:
            by_node.setdefault(node, []).append(f"no {param} in the file, {_dims(new_t[tensor][0])} here")
        elif old_t[tensor][0] != new_t[tensor][0]:
            by_node.setdefault(node, []).append(
                f"{param} {_dims(old_t[tensor][0])} in the file, {_dims(new_t[tensor][0])} here")
        elif old_t[tensor][2] != new_t[tensor][2]:
            by_node.setdefault(node, []).append(
                f"{param} is {old_t[tensor][2]} in the file, {new_t[tensor][2]} here")
    for name, (op, inputs) in new.items():
        if name not in old:
            continue
        old_op, old_inputs = old[name]
        if old_op != op:
            lines.append(f"{name} is {old_op} in the file, {op} here")
        elif old_inputs != inputs:
            lines.append(f"{op} {name} reads {', '.join(old_inputs) or 'nothing'} in the file, "
                         f"{', '.join(inputs) or 'nothing'} here")
        if name in by_node:
            lines.append(f"{op} {name}: " + "; ".join(by_node[name]))
    return lines


def describe(lines: list[str]) -> str:
    """The differences in one line: the first MAX_SHOWN, then how many more."""
    shown = "; ".join(lines[:MAX_SHOWN])
    return shown + (f"; and {len(lines) - MAX_SHOWN} more" if len(lines) > MAX_SHOWN else "")
