"""The `train { ... }` section: what each setting may hold, checked at elaboration.

The training runtime reads the validated dict this returns; an unknown setting,
a misspelt optimizer or a negative learning rate is reported at its spec line.
"""

from __future__ import annotations

import math

from ..errors import Pos, SpecError, did_you_mean

LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy", "mse")

# optimizer -> its keyword arguments and their defaults (Keras-like names)
OPTIMIZERS = {
    "sgd": {"lr": 0.01, "momentum": 0.0, "nesterov": False},
    "momentum": {"lr": 0.01, "momentum": 0.9},
    "nesterov": {"lr": 0.01, "momentum": 0.9},
    "adagrad": {"lr": 0.01, "epsilon": 1e-7},
    "rmsprop": {"lr": 0.001, "rho": 0.9, "epsilon": 1e-7},
    "adam": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-7},
    "nadam": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-7},
}
# optimizer state tensors per parameter (for the training memory estimate)
OPTIMIZER_SLOTS = {"sgd": 1, "momentum": 1, "nesterov": 1, "adagrad": 1, "rmsprop": 1,
                   "adam": 2, "nadam": 2}


def optimizer_state(train: dict | None, optimizer: str | None = None) -> tuple[str, int]:
    """(the optimizer, its state tensors per trainable parameter): `optimizer` if given, else
    the train section's (validated), else adam. Plain sgd (no momentum) keeps none."""
    if optimizer is None:
        optimizer = (train or {}).get("optimizer", {}).get("name", "adam")
    slots = OPTIMIZER_SLOTS.get(optimizer, 2)
    if optimizer == "sgd" and not (train or {}).get("optimizer", {}).get("momentum"):
        slots = 0
    return optimizer, slots

# None: no default. `decay_steps` left out is the whole run (schedule_lr in runtime/optim.py);
# piecewise's `epochs` and `lr` are required.
SCHEDULES = {
    "constant": {},
    "power": {"decay_steps": None, "power": 1.0},
    "exponential": {"decay_steps": None, "rate": 0.1},
    "piecewise": {"epochs": None, "lr": None},
    "polynomial": {"decay_steps": None, "end_lr": 0.0001, "power": 1.0},
}

OPTIONAL_ARGS = ("decay_steps",)   # no default value, yet not required

AUGMENTATIONS = {"shift": 0.1, "flip": None, "crop": 4, "brightness": 0.1}
# the largest amount of each: a shift is a fraction of the image's size (1 moves every pixel
# out), a crop pads by that many pixels each side; past these an image is all fill
AUGMENT_MAX = {"shift": 1.0, "crop": 10_000, "brightness": math.inf}
METRICS = ("accuracy", "top_k", "loss", "mean_iou")
MAX_BUCKET_MB = 1024.0   # a gradient bucket larger than this is one reduction after the backward pass anyway
LISTED_SETTINGS = ("augment", "metrics")    # settings that hold a list

# the data sets netspec generates (netspec/training/shapes.py): their options, with defaults,
# and each option's range (integers)
DATASETS = {"shapes": {"count": 1000, "seed": 0}}
DATASET_LIMITS = {"count": (1, 1_000_000), "seed": (0, 2**63 - 1)}


def data_text(name: str, options: dict) -> str:
    """A generated data set as `data` stores it and `--data` takes it: `shapes`,
    `shapes(count=200)` (the options given, in order)."""
    args = ", ".join(f"{k}={v}" for k, v in options.items())
    return f"{name}({args})" if args else name


def _num(v, name, pos, lo=0.0, hi=math.inf, lo_open=False, integer=False, section="train"):
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
    if integer:
        ok = ok and isinstance(v, int)
    if not ok or v < lo or v > hi or (lo_open and v == lo):
        kind = "an integer" if integer else "a number"
        bound = f" > {lo:g}" if lo_open else (f" >= {lo:g}" if lo > -math.inf else "")
        raise SpecError(f"{section}: {name} must be {kind}{bound}"
                        + (f" and <= {hi:g}" if hi < math.inf else "") + f", got {_show(v)}", pos)
    return v


def _show(v):
    from .values import show
    return show(v)


def _call(v, table: dict, what: str, pos: Pos, section: str = "train"):
    """A name (`adam`) or a call (`adam(lr=0.01)`) from `table`, with defaults filled in."""
    from .values import SettingCall, Symbol
    if isinstance(v, Symbol) or isinstance(v, str):
        name, args, kwargs = str(v), (), ()
    elif isinstance(v, SettingCall):
        name, args, kwargs = v.name, v.args, v.kwargs
    else:
        raise SpecError(f"{section}: {what} must be a name such as {next(iter(table))}, got {_show(v)}", pos)
    if name not in table:
        raise SpecError(f"{section}: unknown {what} '{name}'", pos,
                        hint=did_you_mean(name, table) or f"choose from: {', '.join(table)}")
    if args:
        raise SpecError(f"{section}: {what} '{name}' takes keyword arguments only "
                        f"({', '.join(table[name]) or 'none'})", pos)
    out = {"name": name, **table[name]}
    given = {key for key, _ in kwargs}
    missing = [k for k, d in table[name].items()
               if d is None and k not in given and k not in OPTIONAL_ARGS]
    if missing:
        raise SpecError(f"{section}: {what} '{name}' needs {', '.join(repr(m) for m in missing)}", pos,
                        hint=f"e.g. {name}({', '.join(f'{m}=...' for m in missing)})")
    for key, value in kwargs:
        if key not in table[name]:
            raise SpecError(f"{section}: {what} '{name}' has no argument '{key}'", pos,
                            hint=did_you_mean(key, table[name]) or
                            f"its arguments: {', '.join(table[name]) or 'none'}")
        out[key] = _plain(value)
    return out


def _plain(v):
    from .values import plain
    return plain(v)


def validate_train(settings: list[tuple[str, object, Pos]], pos: Pos) -> dict:
    """Check each setting and return a plain dict with defaults filled in."""
    cfg: dict = {"loss": "sparse_categorical_crossentropy", "optimizer": {"name": "adam", **OPTIMIZERS["adam"]},
                 "schedule": {"name": "constant"}, "batch": 32, "epochs": 10, "l1": 0.0, "l2": 0.0,
                 "metrics": ["accuracy"], "validation_split": 0.1, "augment": {}}
    seen: dict[str, Pos] = {}
    for name, value, p in settings:
        if name in seen:
            raise SpecError(f"train: '{name}' is set twice", p, notes=[("first set here", seen[name])])
        seen[name] = p
        if name == "loss":
            loss = str(_plain(value)) if not isinstance(value, (int, float)) else None
            if loss not in LOSSES:
                raise SpecError(f"train: unknown loss {_show(value)}", p,
                                hint=did_you_mean(str(loss), LOSSES) or f"choose from: {', '.join(LOSSES)}")
            cfg["loss"] = loss
        elif name == "optimizer":
            cfg["optimizer"] = _call(value, OPTIMIZERS, "optimizer", p)
            _num(cfg["optimizer"]["lr"], "optimizer lr", p, lo_open=True)
        elif name == "schedule":
            cfg["schedule"] = _call(value, SCHEDULES, "schedule", p)
            if cfg["schedule"].get("decay_steps") is not None:
                _num(cfg["schedule"]["decay_steps"], "schedule decay_steps", p, lo_open=True)
        elif name in ("batch", "epochs", "patience", "seed", "top_k"):
            cfg[name] = _num(value, name, p, lo=0 if name == "seed" else 1, integer=True)
        elif name in ("l1", "l2", "clip_norm", "clip_value", "lr"):
            cfg[name] = _num(value, name, p, lo_open=name.startswith("clip") or name == "lr")
        elif name == "validation_split":
            cfg[name] = _num(value, name, p, hi=0.9)
        elif name == "bucket_mb":      # data-parallel runs' gradient buckets (training/distributed.py)
            cfg[name] = _num(value, name, p, lo_open=True, hi=MAX_BUCKET_MB)
        elif name == "sync_batchnorm":
            if isinstance(value, bool) or _plain(value) in (True, False):
                cfg[name] = bool(_plain(value))
            else:
                raise SpecError(f"train: sync_batchnorm is true or false, got {_show(value)}", p)
        elif name == "metrics":
            items = value if isinstance(value, tuple) else (value,)
            names = [str(_plain(m)) for m in items]
            for m in names:
                if m not in METRICS:
                    raise SpecError(f"train: unknown metric '{m}'", p,
                                    hint=did_you_mean(m, METRICS) or f"choose from: {', '.join(METRICS)}")
            cfg[name] = names
        elif name == "early_stopping":
            from .values import SettingCall
            if not isinstance(value, SettingCall) and _plain(value) not in (True, False):
                raise SpecError("train: early_stopping is true, false or "
                                "early_stopping(monitor=val_loss, patience=5, restore_best=true)", p)
            cfg[name] = ({k: _plain(v) for k, v in value.kwargs} if isinstance(value, SettingCall)
                         else bool(value))
        elif name == "augment":
            from .values import SettingCall
            calls = value if isinstance(value, tuple) else (value,)
            aug = {}
            for c in calls:
                spec = _call(c, {k: ({"amount": d} if d is not None else {}) for k, d in AUGMENTATIONS.items()},
                             "augmentation", p)
                if "amount" in spec:
                    _num(spec["amount"], f"{spec['name']} amount", p, hi=AUGMENT_MAX[spec["name"]])
                aug[spec.pop("name")] = spec
            cfg[name] = aug
        elif name == "data":
            from .values import SettingCall
            if isinstance(value, SettingCall):     # a generated data set with options
                spec = _call(value, DATASETS, "data set", p)
                given = {}
                for key, _ in value.kwargs:
                    lo, hi = DATASET_LIMITS[key]
                    given[key] = _num(spec[key], f"{spec['name']} {key}", p, lo=lo, hi=hi, integer=True)
                cfg[name] = data_text(spec["name"], given)
            else:
                cfg[name] = str(_plain(value))
        else:
            known = ("loss", "optimizer", "schedule", "batch", "epochs", "l1", "l2", "lr", "metrics",
                     "validation_split", "early_stopping", "patience", "clip_norm", "clip_value",
                     "seed", "augment", "data", "top_k", "bucket_mb", "sync_batchnorm")
            raise SpecError(f"train: unknown setting '{name}'", p,
                            hint=did_you_mean(name, known) or f"settings: {', '.join(known)}")
    return cfg
