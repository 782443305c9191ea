"""The metadata netspec writes into weight and checkpoint files, checked when it is read back.

A weights file (`netspec train`'s weights.safetensors, or `Model.save_weights`) and a
checkpoint carry string metadata beside their tensors. A file is input like any other: it
may come from another tool, another version or another person, damaged or edited. So every
key netspec reads is checked here, once, when the file is opened: the JSON parses, each
value has the type and range netspec writes, and what a key describes must fit the file's
own tensors before anything is built from it (`check_fits`). A refusal is a MetadataError
naming the file and the key (exit status 1 from the command line).

    key          value (JSON unless a plain string)                       weights  checkpoint
    format       "netspec-weights-1" / "netspec-checkpoint-1" (string)    optional required
    network      the network's name (string)                              optional optional
    spec         the spec text (string; --resume compares it)             optional required
    context      {"sets": ["NAME=VALUE"], "input": SHAPE|null,            optional required
                  "network": NAME|null, "freeze": [LABEL]}, each optional
    norm         {"scale": >0, "mean": [finite], "std": [>0], "fit":      optional optional
                  "pad"|"resize"}: how inputs were normalised
    class_names  [string]                                                 optional optional
    loss         one of the losses (string)                               optional optional
    data         the training data: a path, "digits" or "shapes(...)", or  optional optional
                 null
    graph_hash   SHA-256 (64 hex digits) of `layout` (netspec/fingerprint)  optional optional
    layout       the saved network's fingerprint: {"nodes": [[name, op,    optional optional
                 [inputs]]], "tensors": {name: [shape, dtype, kind]}}
    config       the resolved train settings (training.config.resolve)    -        required
    state        epoch, step, optimizer_t, best, best_epoch, wait,        -        required
                 stopped_early, history, rng, dropout_rng (PCG64 states)

Files written before graph_hash and layout existed hold neither: they are checked by their
tensors' names and shapes only. A file written by `Model.save_weights` holds format, network,
graph_hash and layout: predict and eval then
feed inputs scaled to [0, 1] but not standardised (UNSCALED_NORM) and say so. Keys netspec
does not know are ignored (other tools write their own, e.g. {"format": "pt"}), inside
`config` and `state` too, so that a field added later does not make older readers refuse.

This is a small typed validator rather than jsonschema or pydantic: half of the checks
depend on the file's context, not on the JSON alone (norm has one entry per input channel,
class names fit the outputs, the stored context builds a network whose parameters match the
file's tensors, the optimizer and schedule arguments are checked by runtime.optim's own
validators, an rng state must suit NumPy's PCG64), JSON Schema's "number" takes NaN and
Infinity as Python's json parses them, and messages here name the file, the key and the fix
in netspec's words.
"""

from __future__ import annotations

import json
import math
from typing import NoReturn

import numpy as np

from ..runtime.checkpoint import WeightsError
from ..errors import TrainingError

WEIGHTS_FORMAT = "netspec-weights-1"
CHECKPOINT_FORMAT = "netspec-checkpoint-1"

# limits on what a file's metadata may hold (docs/RUNTIME.md, "Weight files")
MAX_JSON_CHARS = 64 * 2**20      # one JSON value (a long history)
MAX_NAME_CHARS = 1000            # a class name, a NAME=VALUE, a layer label, a path
MAX_CLASS_NAMES = 1_000_000
MAX_LIST_ITEMS = 10_000          # --set items, --freeze labels, metrics, schedule boundaries
MAX_CHANNELS = 65_536            # entries of norm's mean and std
MAX_INPUT_VALUES = 2**26         # values in one sample of a stored --input shape
MAX_COUNT = 2**63 - 1            # epochs, steps, batch sizes
MAX_SEED_DIGITS = 40
MAX_LAYOUT_ITEMS = 1_000_000     # nodes and tensors in a stored layout
MAX_NORM = 1e30                  # |norm mean|, std and scale
MIN_STD = 1e-12

# what netspec does without stored normalisation (a file from Model.save_weights): inputs
# scaled to [0, 1] (8-bit by 255, 16-bit by 65535, other integers by `scale`), not standardised
UNSCALED_NORM = {"scale": 255.0, "mean": [0.0], "std": [1.0], "fit": "pad"}

_HINT = ("netspec does not write that, so the file was changed or damaged: train again, or "
         "give a file netspec wrote")


class MetadataError(WeightsError, TrainingError):
    """Metadata in a weight or checkpoint file that is not what netspec writes, or does not fit:
    a bad weight file (load_weights' WeightsError) and a reason training cannot go on
    (read_checkpoint's TrainingError), so that callers catching either see it."""


class Metadata(dict):
    """A file's metadata once checked: the strings as read (a dict, as load_arrays returns
    them) and the parsed values as attributes, None where the file has no such key."""

    format: str | None
    network: str | None
    spec: str | None
    context: dict | None
    norm: dict | None
    class_names: list | None
    loss: str | None
    data: str | None          # None also when the key is absent: see has_data
    config: dict | None
    state: dict | None
    layout: dict | None       # the saved network's fingerprint (its graph_hash checked)
    checkpoint: bool          # checked as a checkpoint (config and state present)
    source: str               # the file, for messages

    @property
    def has_data(self) -> bool:
        return "data" in self


def read_metadata(raw: dict, source, checkpoint: bool = False) -> Metadata:
    """Check the metadata of the file `source` (named in errors); checkpoint=True requires what
    --resume needs. A Metadata already checked (as a checkpoint, if that is asked) is returned
    as it is."""
    if isinstance(raw, Metadata) and (raw.checkpoint or not checkpoint):
        return raw
    r = _Reader(source)
    meta = Metadata(raw)
    fmt = r.string("format", raw["format"], 100) if "format" in raw else None
    if fmt is not None and fmt.startswith("netspec-") and fmt not in (WEIGHTS_FORMAT, CHECKPOINT_FORMAT):
        raise MetadataError(f"{source}: metadata 'format' is {fmt!r}, which this netspec does not "
                            f"read ({WEIGHTS_FORMAT}, {CHECKPOINT_FORMAT}); was it written by a "
                            "newer netspec?")
    if checkpoint:
        if fmt != CHECKPOINT_FORMAT:
            raise MetadataError(f"{source}: not a netspec training checkpoint (metadata 'format' is "
                                f"{fmt or 'missing'}, not {CHECKPOINT_FORMAT})")
        for key in ("spec", "context", "config", "state"):
            if key not in raw:
                raise MetadataError(f"{source}: metadata '{key}' is missing; a checkpoint holds "
                                    f"spec, context, config and state; {_HINT}")
    meta.format = fmt
    meta.checkpoint = checkpoint
    meta.source = str(source)
    meta.network = r.string("network", raw["network"], MAX_NAME_CHARS) if "network" in raw else None
    meta.spec = r.string("spec", raw["spec"], _max_spec_chars()) if "spec" in raw else None
    meta.loss = r.choice("loss", raw["loss"], _losses()) if "loss" in raw else None
    meta.context = r.context(r.json("context", raw["context"])) if "context" in raw else None
    meta.norm = r.norm(r.json("norm", raw["norm"])) if "norm" in raw else None
    meta.class_names = r.class_names(r.json("class_names", raw["class_names"])) if "class_names" in raw else None
    meta.data = r.path_or_null("data", r.json("data", raw["data"])) if "data" in raw else None
    meta.config = r.config(r.json("config", raw["config"])) if "config" in raw else None
    meta.layout = r.layout(raw) if "layout" in raw or "graph_hash" in raw else None
    meta.state = r.state(r.json("state", raw["state"])) if "state" in raw else None
    return meta


def parameter_shapes(graph) -> dict[str, tuple[int, ...]]:
    """Every parameter of the elaborated graph by its model name ('c1.weight'), with its
    shape, as a compiled Model's `params` will hold them, without lowering or allocating."""
    return {f"{node.name}.{p.name}": tuple(p.shape) for node in graph.nodes() for p in node.params}


def check_fits(meta: Metadata, graph, arrays: dict, source, context_used: bool = False,
               tensors: bool = True) -> None:
    """Before anything is compiled or allocated: the file's tensors are the graph's parameters
    (names and shapes; tensors=False: not checked, for a forced load of those that match), its
    norm has one entry per input channel and its class names fit the outputs. context_used:
    the graph was built from the stored context (said in the error)."""
    problem = tensors and fit_problem(parameter_shapes(graph), {k: np.shape(v) for k, v in arrays.items()})
    if problem:
        if context_used:
            raise MetadataError(
                f"{source} does not fit {graph.name} as its metadata 'context' builds it "
                f"({describe_flags(*stored_flags(meta))}): {problem}. The stored settings do not match "
                "the file's own tensors (was the file changed?); give --set/--input to build the "
                "network yourself")
        raise MetadataError(f"{source} does not fit {graph.name}: {problem} (were these weights "
                            "trained with other --set/--input values?)")
    shape = graph.node(graph.inputs[0]).shape
    channels = shape[0] if len(shape) == 3 else 1
    if meta.norm is not None and len(meta.norm["mean"]) != channels:
        shown = f"{shape[0]}@{'x'.join(map(str, shape[1:]))}" if len(shape) == 3 else "x".join(map(str, shape))
        raise MetadataError(f"{source}: metadata 'norm' holds {len(meta.norm['mean'])} channel(s) "
                            f"but {graph.name}'s input {shown} has {channels}; {_HINT}")
    classes = max(math.prod(graph.shape_of(graph.outputs[0])), 2)
    if meta.class_names is not None and len(meta.class_names) > classes:
        raise MetadataError(f"{source}: metadata 'class_names' names {len(meta.class_names):,} classes "
                            f"but {graph.name} has {classes} outputs; {_HINT}")


def network_differences(meta: Metadata, graph, dtype: str = "float32") -> list[str] | None:
    """What differs between the network a file was saved from and `graph` (fingerprint's
    lines, [] when they are the same), or None for a file without a layout (written before
    netspec stored one: only its tensors' names and shapes can be checked)."""
    if meta.layout is None:
        return None
    from ..fingerprint import differences, fingerprint, fingerprint_hash
    here = fingerprint(graph, dtype)
    if fingerprint_hash(here) == meta["graph_hash"]:
        return []
    return differences(meta.layout, here)


def refuse_other_network(meta: Metadata, graph, dtype: str = "float32", force_hint: str = "") -> None:
    """A MetadataError saying what differs when the file was saved from another network than
    `graph`; nothing for the same one or a file without a layout."""
    from ..fingerprint import describe
    found = network_differences(meta, graph, dtype)
    if found:
        raise MetadataError(f"{meta.source} was saved from a different network than "
                            f"{graph.name}: {describe(found)}" + (f" ({force_hint})" if force_hint else ""))


def class_names_for(meta: Metadata, classes: int) -> list[str]:
    """`classes` names: the stored ones (data may have fewer classes than the outputs), then
    "k" for class k."""
    names = list(meta.class_names or [])[:classes]
    return names + [str(i) for i in range(len(names), classes)]


def stored_flags(meta: Metadata) -> tuple[list[str], str | None]:
    """The --set items and the --input a file's metadata says its network was built with
    (netspec train's context), ([], None) when it says nothing."""
    context = meta.context or {}
    return _Reader(meta.source).set_flags(context.get("sets", [])), context.get("input")


def describe_flags(sets: list[str], input_shape: str | None) -> str:
    """Stored build settings as command-line flags, for messages."""
    flags = [f"--set {s}" for s in sets] + ([f"--input {input_shape}"] if input_shape else [])
    text = " ".join(flags) or "no --set/--input"
    return text if len(text) <= 200 else text[:200] + "..."


# ---------------------------------------------------------------- checks


def _max_spec_chars() -> int:
    from ..lang.parser import MAX_FILE_BYTES
    return MAX_FILE_BYTES


def _losses():
    from ..lang.train_section import LOSSES
    return LOSSES


def _show(value) -> str:
    """A value, cut short, with its JSON type: '"3" (a string)', 'a list of 2 items'. Lists
    and objects are described, not printed: they may be large or deeply nested."""
    if isinstance(value, list):
        return f"a list of {len(value):,} item{'s' if len(value) != 1 else ''}"
    if value is None:
        return "null"
    if isinstance(value, dict):
        keys = ", ".join(str(k)[:20] for k in list(value)[:4]) + (", ..." if len(value) > 4 else "")
        return f"an object ({keys})" if value else "an empty object"
    text = json.dumps(value[:61] if isinstance(value, str) else value)
    if len(text) > 60:
        text = text[:57] + "..."
    kind = ("true/false" if isinstance(value, bool) else "an integer" if isinstance(value, int)
            else "a number" if isinstance(value, float) else "a string")
    return f"{text} ({kind})"


class _Reader:
    """The checks, each naming the file and the key path ('state.history[2].seconds')."""

    def __init__(self, source):
        self.source = str(source)

    def fail(self, where: str, expected: str, value) -> NoReturn:
        raise MetadataError(f"{self.source}: metadata '{where}' must be {expected}, got "
                            f"{_show(value)}; {_HINT}")

    def refuse(self, where: str, reason: str) -> NoReturn:
        raise MetadataError(f"{self.source}: metadata '{where}': {reason}; {_HINT}")

    # -- JSON types
    def json(self, key: str, raw):
        if not isinstance(raw, str):
            self.fail(key, "a JSON string", raw)
        if len(raw) > MAX_JSON_CHARS:
            self.refuse(key, f"{len(raw):,} characters, more than the {MAX_JSON_CHARS:,} netspec reads")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as e:
            self.refuse(key, f"not valid JSON ({str(e)[:120] or type(e).__name__})")

    def object(self, where: str, value, required=(), optional=(), extra: bool = False) -> dict:
        """A JSON object with the `required` keys; others only from `optional` unless `extra`."""
        if not isinstance(value, dict):
            self.fail(where, "a JSON object", value)
        missing = [k for k in required if k not in value]
        if missing:
            self.refuse(where, f"'{missing[0]}' is missing (it holds {', '.join(required)})")
        if not extra:
            unknown = [k for k in value if k not in required and k not in optional]
            if unknown:
                self.refuse(where, f"unknown key '{str(unknown[0])[:100]}' (it holds "
                            f"{', '.join((*required, *optional))})")
        return value

    def integer(self, where: str, value, lo: int = 0, hi: int = MAX_COUNT) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.fail(where, f"the integer {lo}" if lo == hi else f"an integer from {lo} to {hi}"
                      if hi != MAX_COUNT else f"an integer >= {lo}", value)
        return value

    def number(self, where: str, value, lo: float = -math.inf, hi: float = math.inf,
               lo_open: bool = False, finite: bool = True) -> float:
        """finite=False also takes NaN and the infinities (JSON's NaN, Infinity, as Python's
        json writes a diverged metric)."""
        ok = not isinstance(value, bool) and isinstance(value, (int, float))
        if ok and isinstance(value, int):
            ok = abs(value) < 2**1023          # float() of a larger JSON integer overflows
        if ok:
            v = float(value)
            ok = (not finite and not math.isfinite(v)) or (
                math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi)
        if not ok:
            bounds = [f"> {lo:g}" if lo_open else f">= {lo:g}"] if lo > -math.inf else []
            bounds += [f"<= {hi:g}"] if hi < math.inf else []
            self.fail(where, ("a finite number" if finite else "a number")
                      + (" " + " and ".join(bounds) if bounds else ""), value)
        return float(value)

    def boolean(self, where: str, value) -> bool:
        if not isinstance(value, bool):
            self.fail(where, "true or false", value)
        return value

    def string(self, where: str, value, max_chars: int) -> str:
        if not isinstance(value, str):
            self.fail(where, "a string", value)
        if len(value) > max_chars:
            self.refuse(where, f"{len(value):,} characters, more than the {max_chars:,} netspec reads")
        return value

    def choice(self, where: str, value, choices) -> str:
        if not isinstance(value, str) or value not in choices:
            self.fail(where, "one of " + ", ".join(choices), value)
        return value

    def json_list(self, where: str, value, max_items: int = MAX_LIST_ITEMS) -> list:
        if not isinstance(value, list):
            self.fail(where, "a JSON list", value)
        if len(value) > max_items:
            self.refuse(where, f"{len(value):,} items, more than the {max_items:,} netspec reads")
        return value

    def strings(self, where: str, value, max_items: int = MAX_LIST_ITEMS) -> list[str]:
        for i, item in enumerate(self.json_list(where, value, max_items)):
            self.string(f"{where}[{i}]", item, MAX_NAME_CHARS)
        return value

    def class_names(self, value) -> list[str]:
        # printed by eval and predict: a control character would drive the terminal
        for i, name in enumerate(self.strings("class_names", value, MAX_CLASS_NAMES)):
            if any(ord(c) < 32 or ord(c) == 127 for c in name):
                self.fail(f"class_names[{i}]", "printable (no control characters)", name)
        return value

    def path_or_null(self, where: str, value) -> str | None:
        return None if value is None else self.string(where, value, MAX_NAME_CHARS * 4)

    def optional_number(self, where: str, value, **bounds) -> float | None:
        return None if value is None else self.number(where, value, **bounds)

    # -- the keys
    def context(self, value) -> dict:
        # the keys are optional: run.train's Python callers describe their build their own way
        # (--resume only compares the stored context with its own); `stored_flags` checks the
        # --set items where the command line builds a network from them
        ctx = self.object("context", value, extra=True)
        if "sets" in ctx:
            self.json_list("context.sets", ctx["sets"], 100)
        if ctx.get("input") is not None:
            self._input_shape(self.string("context.input", ctx["input"], 200))
        if ctx.get("network") is not None:
            self.string("context.network", ctx["network"], MAX_NAME_CHARS)
        if "freeze" in ctx:
            self.strings("context.freeze", ctx["freeze"])
        return ctx

    def layout(self, raw: dict) -> dict:
        """graph_hash and layout, both present, the layout as fingerprint() writes it and
        hashing to graph_hash."""
        from ..fingerprint import fingerprint_hash
        for key in ("graph_hash", "layout"):
            if key not in raw:
                self.refuse(key, "missing, though graph_hash and layout are written together")
        digest = self.string("graph_hash", raw["graph_hash"], 64)
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            self.fail("graph_hash", "64 hexadecimal digits", digest)
        value = self.object("layout", self.json("layout", raw["layout"]), required=("nodes", "tensors"))
        for i, node in enumerate(self.json_list("layout.nodes", value["nodes"], MAX_LAYOUT_ITEMS)):
            where = f"layout.nodes[{i}]"
            if not isinstance(node, list) or len(node) != 3:
                self.fail(where, "[name, op, [inputs]]", node)
            self.string(f"{where}[0]", node[0], MAX_NAME_CHARS)
            self.string(f"{where}[1]", node[1], MAX_NAME_CHARS)
            self.strings(f"{where}[2]", node[2])
        tensors = self.object("layout.tensors", value["tensors"], extra=True)
        if len(tensors) > MAX_LAYOUT_ITEMS:
            self.refuse("layout.tensors", f"{len(tensors):,} tensors, more than the "
                        f"{MAX_LAYOUT_ITEMS:,} netspec reads")
        for name, entry in tensors.items():
            where = f"layout.tensors.{str(name)[:100]}"
            if not isinstance(entry, list) or len(entry) != 3 or "." not in name:
                self.fail(where, "[shape, dtype, kind] under a name node.param", entry)
            for k, dim in enumerate(self.json_list(f"{where}[0]", entry[0], 8)):
                self.integer(f"{where}[0][{k}]", dim, lo=1)
            self.choice(f"{where}[1]", entry[1], ("float32", "float64"))
            self.choice(f"{where}[2]", entry[2], ("param", "state"))
        if fingerprint_hash(value) != digest:
            self.refuse("graph_hash", "not the hash of the stored layout")
        return value

    def set_flags(self, values: list) -> list[str]:
        for i, item in enumerate(values):
            name = item.split("=", 1)[0].strip() if isinstance(item, str) and "=" in item else ""
            if not name.isidentifier() or len(item) > MAX_NAME_CHARS:
                self.fail(f"context.sets[{i}]", "NAME=VALUE (as --set takes it)", item)
        return list(values)

    def _input_shape(self, text: str) -> None:
        from ..lang.parser import parse_shape_text
        shape_text = text.split("=", 1)[1] if "=" in text else text
        try:
            dims = parse_shape_text(shape_text)
        except ValueError as e:
            self.refuse("context.input", f"{text!r} is not an input shape such as 3@32x32 or 784 ({e})")
        if len(dims) > 4 or math.prod(dims) > MAX_INPUT_VALUES:
            self.refuse("context.input", f"{text!r} is larger than the {MAX_INPUT_VALUES:,} values per "
                        "sample netspec builds from a file's metadata")

    def norm(self, value) -> dict:
        norm = self.object("norm", value, required=("scale", "mean", "std", "fit"))
        # bounds that keep float32 arithmetic finite; netspec writes std >= data.STD_FLOOR
        self.number("norm.scale", norm["scale"], lo=0, lo_open=True, hi=MAX_NORM)
        mean = self.json_list("norm.mean", norm["mean"], MAX_CHANNELS)
        std = self.json_list("norm.std", norm["std"], MAX_CHANNELS)
        if not mean or len(std) != len(mean):
            self.refuse("norm", f"mean and std need one entry per input channel, got {len(mean)} "
                        f"and {len(std)}")
        for i, m in enumerate(mean):
            self.number(f"norm.mean[{i}]", m, lo=-MAX_NORM, hi=MAX_NORM)
        for i, s in enumerate(std):
            self.number(f"norm.std[{i}]", s, lo=MIN_STD, hi=MAX_NORM)
        self.choice("norm.fit", norm["fit"], ("pad", "resize"))
        return norm

    def config(self, value) -> dict:
        from ..lang.train_section import METRICS
        from .config import DEFAULTS, EARLY_STOPPING, KEEP, LATER_SETTINGS
        # `keep` and the data-parallel settings came later: a checkpoint of an older netspec has
        # none (resume takes the default)
        cfg = self.object("config", value, required=tuple(k for k in DEFAULTS if k not in LATER_SETTINGS),
                          extra=True)
        if cfg.get("bucket_mb") is not None:
            self.number("config.bucket_mb", cfg["bucket_mb"], lo=0, hi=1024, lo_open=True)
        if cfg.get("sync_batchnorm") not in (None, True, False):
            self.fail("config.sync_batchnorm", "true or false", cfg["sync_batchnorm"])
        if cfg.get("keep") is not None:
            self.choice("config.keep", cfg["keep"], KEEP)
        self.choice("config.loss", cfg["loss"], _losses())
        self._optimizer(cfg["optimizer"])
        self._schedule(cfg["schedule"])
        self.integer("config.batch", cfg["batch"], lo=1)
        self.integer("config.epochs", cfg["epochs"], lo=1)
        for key in ("l1", "l2"):
            self.number(f"config.{key}", cfg[key], lo=0)
        for i, m in enumerate(self.json_list("config.metrics", cfg["metrics"])):
            self.choice(f"config.metrics[{i}]", m, METRICS)
        self.integer("config.top_k", cfg["top_k"], lo=1)
        self.number("config.validation_split", cfg["validation_split"], lo=0, hi=0.9)
        if cfg["early_stopping"] is not None:
            es = self.object("config.early_stopping", cfg["early_stopping"], required=tuple(EARLY_STOPPING))
            self.string("config.early_stopping.monitor", es["monitor"], MAX_NAME_CHARS)
            self.integer("config.early_stopping.patience", es["patience"])
            if es["restore_best"] not in (True, False):      # 0 and 1 too, as a spec may write them
                self.fail("config.early_stopping.restore_best", "true or false", es["restore_best"])
            self.number("config.early_stopping.min_delta", es["min_delta"])
        self._augment(cfg["augment"])
        for key in ("clip_norm", "clip_value"):
            self.optional_number(f"config.{key}", cfg[key], lo=0, lo_open=True)
        self.integer("config.seed", cfg["seed"], hi=10**MAX_SEED_DIGITS)
        self.path_or_null("config.data", cfg["data"])
        self.path_or_null("config.validation_data", cfg["validation_data"])
        return cfg

    def _optimizer(self, value) -> None:
        # the optimizer's own checks (runtime.optim), on no parameters: what Trainer will build
        from ..runtime.optim import make_optimizer
        from ..lang.train_section import OPTIMIZERS
        opt = self.object("config.optimizer", value, required=("name", "lr"), extra=True)
        self.choice("config.optimizer.name", opt["name"], OPTIMIZERS)
        self.number("config.optimizer.lr", opt["lr"], lo=0, lo_open=True)
        try:
            make_optimizer(opt["name"], {}, **{k: v for k, v in opt.items() if k not in ("name", "lr")})
        except (ValueError, TypeError) as e:
            self.refuse("config.optimizer", str(e)[:300])

    def _schedule(self, value) -> None:
        # the schedule's own checks (runtime.optim.schedule_lr), at its first step
        from ..runtime.optim import schedule_lr
        from ..lang.train_section import SCHEDULES
        sched = self.object("config.schedule", value, required=("name",), extra=True)
        self.choice("config.schedule.name", sched["name"], SCHEDULES)
        for key, arg in sched.items():
            if isinstance(arg, list):
                self.json_list(f"config.schedule.{key}", arg)
        try:
            schedule_lr(sched["name"], 1.0, 0, 0, 1, **{k: v for k, v in sched.items() if k != "name"})
        except (ValueError, TypeError, ArithmeticError) as e:
            self.refuse("config.schedule", str(e)[:300])

    def _augment(self, value) -> None:
        from .data import AUGMENTATIONS
        aug = self.object("config.augment", value, optional=AUGMENTATIONS)
        for name, args in aug.items():
            where = f"config.augment.{name}"
            if name == "flip":
                args = self.object(where, args, optional=("p",))
                if "p" in args:
                    self.number(f"{where}.p", args["p"], lo=0, hi=1)
            else:
                args = self.object(where, args, required=("amount",))
                self.number(f"{where}.amount", args["amount"], lo=0, hi=1e6)

    def state(self, value) -> dict:
        st = self.object("state", value, required=("epoch", "step", "optimizer_t", "best", "best_epoch",
                                                   "wait", "stopped_early", "history", "rng",
                                                   "dropout_rng"), extra=True)
        epoch = self.integer("state.epoch", st["epoch"])
        self.integer("state.step", st["step"])
        self.integer("state.optimizer_t", st["optimizer_t"])
        if st["best"] is not None:
            self.number("state.best", st["best"], finite=False)
        if st["best_epoch"] is not None:
            self.integer("state.best_epoch", st["best_epoch"], hi=epoch)
        self.integer("state.wait", st["wait"])
        # the scale divergence is judged against (trainer.py); absent in older checkpoints
        self.optional_number("state.loss_scale", st.get("loss_scale"), lo=0, lo_open=True)
        self.boolean("state.stopped_early", st["stopped_early"])
        self._history(st["history"], epoch)
        self._rng("state.rng", st["rng"])
        self._rng("state.dropout_rng", st["dropout_rng"])
        return st

    def _history(self, value, epochs: int) -> None:
        """One row per epoch done, numbered 1.., every row with the first row's columns."""
        rows = self.json_list("state.history", value, MAX_COUNT)
        if len(rows) != epochs:
            from .config import counted
            self.refuse("state.history", f"{counted(len(rows), 'row')} for {counted(epochs, 'epoch')} "
                                         f"done (one row per epoch)")
        for i, row in enumerate(rows):
            where = f"state.history[{i}]"
            self.object(where, row, required=("epoch", "seconds"), extra=True)
            self.integer(f"{where}.epoch", row["epoch"], lo=i + 1, hi=i + 1)
            self.number(f"{where}.seconds", row["seconds"], lo=0)
            for key, item in row.items():
                if len(key) > 100:
                    self.refuse(where, f"a column name of {len(key):,} characters")
                self.number(f"{where}.{key}", item, finite=False)
            if set(row) != set(rows[0]):
                self.refuse(where, f"columns {sorted(row)} differ from the first row's {sorted(rows[0])}")

    def _rng(self, where: str, value) -> None:
        """A NumPy PCG64 bit_generator.state as netspec saves it; then NumPy must take it too."""
        st = self.object(where, value, required=("bit_generator", "state", "has_uint32", "uinteger"))
        if st["bit_generator"] != "PCG64":
            self.fail(f"{where}.bit_generator", '"PCG64"', st["bit_generator"])
        inner = self.object(f"{where}.state", st["state"], required=("state", "inc"))
        self.integer(f"{where}.state.state", inner["state"], hi=2**128 - 1)
        self.integer(f"{where}.state.inc", inner["inc"], hi=2**128 - 1)
        self.integer(f"{where}.has_uint32", st["has_uint32"], hi=1)
        self.integer(f"{where}.uinteger", st["uinteger"], hi=2**32 - 1)
        try:
            np.random.PCG64().state = st
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            self.refuse(where, f"NumPy refuses it as a PCG64 state ({e})")


def fit_problem(expected: dict, given: dict, strict: bool = True) -> str | None:
    """Why tensors shaped `given` (name -> shape) do not fit parameters shaped `expected`, in
    words ('missing 1: c1.weight; unexpected 1: c1.wieght', 'c1.weight has shape (6, 5, 5, 1),
    the network expects (6, 1, 5, 5)'), or None when they fit. Names only count with strict."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if strict and (missing or unexpected):
        from ..errors import did_you_mean
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing[:5])}"
                         + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            hint = did_you_mean(unexpected[0], list(expected))
            parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:5])}"
                         + (" ..." if len(unexpected) > 5 else "") + (f" ({hint})" if hint else ""))
        return "; ".join(parts)
    wrong = [name for name in sorted(set(given) & set(expected))
             if tuple(given[name]) != tuple(expected[name])]
    if not wrong:
        return None
    shown = [f"{name} has shape {_shape_text(given[name])}, the network expects "
             f"{_shape_text(expected[name])}" for name in wrong[:3]]
    more = f"; {len(wrong) - 3} more tensors differ in shape" if len(wrong) > 3 else ""
    return "; ".join(shown) + more


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"
