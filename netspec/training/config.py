"""The settings of one training run: the spec's `train { }` section, then command-line flags.

`resolve` returns a plain, JSON-serialisable dict that the trainer, the
checkpoint and `config.json` share; every default is filled in here, once.
"""

from __future__ import annotations

from ..lang.train_section import OPTIMIZERS

# what a run uses when neither the spec nor a flag says otherwise
DEFAULTS = {"loss": None, "optimizer": {"name": "adam", **OPTIMIZERS["adam"]}, "schedule": {"name": "constant"},
            "batch": 32, "epochs": 10, "l1": 0.0, "l2": 0.0, "metrics": ["accuracy"], "top_k": 5,
            "validation_split": 0.1, "early_stopping": None, "augment": {}, "clip_norm": None,
            "clip_value": None, "seed": 0, "data": None, "validation_data": None, "keep": None,
            "bucket_mb": None, "sync_batchnorm": False}
# settings added after checkpoints were first written: a checkpoint may lack them (the default holds)
LATER_SETTINGS = ("keep", "bucket_mb", "sync_batchnorm")

EARLY_STOPPING = {"monitor": "val_loss", "patience": 5, "restore_best": True, "min_delta": 0.0}


KEEP = ("best", "last")   # which epoch's weights a run writes to weights.safetensors


class ConfigError(ValueError):
    """A flag or setting combination that cannot run (bad optimizer name, ...)."""


class FlagError(ConfigError):
    """A command-line flag that cannot apply here (a usage error: the command exits 2)."""


def resolve(section: dict | None, *, loss: str, epochs=None, batch=None, lr=None, optimizer=None,
            seed=None, data=None, validation_split=None, validation_data=None, augment=None,
            keep=None) -> dict:
    """Merge the validated train section (or None) with flags (None: not given)."""
    cfg = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
           for k, v in DEFAULTS.items()}
    for key, value in (section or {}).items():
        if key in cfg or key in ("lr", "patience"):
            cfg[key] = value
    cfg["loss"] = loss
    if optimizer is not None:
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer '{optimizer}' (choose from {', '.join(OPTIMIZERS)})")
        if cfg["optimizer"]["name"] != optimizer:
            cfg["optimizer"] = {"name": optimizer, **OPTIMIZERS[optimizer]}
    # the learning rate: --lr, else the section's lr, else the optimizer's own
    base_lr = lr if lr is not None else cfg.pop("lr", None)
    cfg.pop("lr", None)
    if base_lr is not None:
        cfg = with_lr(cfg, base_lr)
    for key, value in (("epochs", epochs), ("batch", batch), ("seed", seed), ("data", data),
                       ("validation_split", validation_split), ("validation_data", validation_data),
                       ("augment", augment)):
        if value is not None:
            cfg[key] = value
    patience = cfg.pop("patience", None)
    es = cfg["early_stopping"]
    if es is True or (es is None and patience is not None):
        es = {}
    if isinstance(es, dict):
        unknown = set(es) - set(EARLY_STOPPING)
        if unknown:
            raise ConfigError(f"early_stopping has no argument {', '.join(sorted(unknown))} "
                              f"(its arguments: {', '.join(EARLY_STOPPING)})")
        es = {**EARLY_STOPPING, **({"patience": patience} if patience is not None else {}), **es}
        es["monitor"] = str(es["monitor"])
    else:
        es = None
    cfg["early_stopping"] = es
    if keep is not None and keep not in KEEP:
        raise ConfigError(f"keep is 'best' or 'last', not {keep!r}")
    cfg["keep"] = keep if keep is not None else keep_default(cfg)
    if cfg["validation_data"] is not None:  # validation comes from there, not from the training data
        cfg["validation_split"] = 0.0
    if cfg["validation_split"] == 0 and cfg["validation_data"] is None and es and es["monitor"].startswith("val_"):
        es["monitor"] = es["monitor"][4:]
    return cfg


def with_lr(cfg: dict, lr: float) -> dict:
    """cfg with the base learning rate `lr`. Piecewise rates are absolute, so a new base rate
    scales them all: --lr 0.01 on piecewise(lr=[0.1, 0.01, 0.001]) gives [0.01, 0.001, 0.0001]."""
    cfg = {**cfg, "optimizer": {**cfg["optimizer"], "lr": float(lr)}}
    sched = cfg["schedule"]
    if sched["name"] == "piecewise" and sched.get("lr"):
        factor = float(lr) / float(sched["lr"][0])
        cfg["schedule"] = {**sched, "lr": [float(r) * factor for r in sched["lr"]]}
    return cfg


def keep_default(cfg: dict) -> str:
    """The best epoch's weights, unless early_stopping(restore_best=false) asks for the last."""
    es = cfg.get("early_stopping")
    return "last" if es and not es.get("restore_best", True) else "best"


def resume_settings(stored: dict, flags: dict, checkpoint) -> tuple[dict, list[str]]:
    """The settings a resumed run goes on with: the checkpoint's `stored` settings, with the
    command-line `flags` that are well defined mid-run applied (--epochs, --lr, --keep), and
    a FlagError for any other flag that asks for a value other than the stored one (another
    batch size, seed, optimizer or data would not continue this run but start another).
    Returns (settings, lines saying what changed)."""
    cfg = dict(stored)
    notes, refused = [], []
    for flag, value in flags.items():
        if value is None or flag == "epochs":
            continue
        now = _stored_value(cfg, flag)
        given = f"--{flag.replace('_', '-')} {_flag_text(value)}"
        if flag in ("lr", "keep"):
            if value != now:
                cfg = with_lr(cfg, value) if flag == "lr" else {**cfg, "keep": value}
                notes.append(f"{given}: changed from {_flag_text(now)} for the rest of the run")
        elif _normal(flag, value) != _normal(flag, now):
            refused.append((given, _flag_text(_normal(flag, now))))
    if flags.get("epochs") is not None:
        cfg["epochs"] = flags["epochs"]
    cfg.setdefault("keep", keep_default(cfg))
    if refused:
        which = "; ".join(f"{given} (the run's is {now})" for given, now in refused)
        raise FlagError(f"--resume continues a run with the settings it started with, so it cannot "
                        f"take {which}. Resume without {'it' if len(refused) == 1 else 'them'} "
                        f"(only --epochs, --lr and --keep may change), or start a new run from the "
                        f"checkpoint's weights: --init-from {checkpoint} "
                        f"{' '.join(given for given, _ in refused)} -o NEW_FOLDER")
    return cfg, notes


def _stored_value(cfg: dict, flag: str):
    if flag == "lr":
        return cfg["optimizer"]["lr"]
    if flag == "optimizer":
        return cfg["optimizer"]["name"]
    if flag == "keep":
        return cfg.get("keep") or keep_default(cfg)
    return cfg.get(flag)


def _normal(flag: str, value):
    """A value as compared between flag and checkpoint: no data setting means the digits."""
    if flag == "data" and value in (None, "digits"):
        return "digits"
    if flag == "validation_split":
        return float(value)
    return value


def _flag_text(value) -> str:
    if isinstance(value, dict):   # augmentations, as the train section writes them
        return "'" + (", ".join(f"{k}({', '.join(f'{a}={v}' for a, v in args.items())})" if args else k
                                for k, args in value.items()) or "none") + "'"
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


def optimizer_kwargs(cfg: dict) -> dict:
    """The optimizer's arguments other than lr, as netspec.runtime.optim takes them."""
    return {k: v for k, v in cfg["optimizer"].items() if k not in ("name", "lr")}


def counted(n: int, noun: str) -> str:
    """'1 epoch', '2 epochs': a count and its noun, plural unless the count is one."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def describe(cfg: dict) -> str:
    opt = cfg["optimizer"]
    args = ", ".join(f"{k}={v}" for k, v in opt.items() if k != "name")
    parts = [f"{opt['name']}({args})", f"batch {cfg['batch']}", counted(cfg["epochs"], "epoch"),
             f"loss {cfg['loss']}"]
    if cfg["schedule"]["name"] != "constant":
        parts.append(f"schedule {cfg['schedule']['name']}")
    if cfg["l1"] or cfg["l2"]:
        parts.append(f"l1={cfg['l1']} l2={cfg['l2']}")
    if cfg["augment"]:
        parts.append("augment " + ", ".join(cfg["augment"]))
    if cfg["early_stopping"]:
        es = cfg["early_stopping"]
        parts.append(f"early stopping on {es['monitor']} (patience {es['patience']})")
    if cfg.get("keep") == "last":
        parts.append("keeping the last epoch's weights")
    return ", ".join(parts)


# Model.fit's keywords that are train-section settings with no flag of their own
# (not bucket_mb or sync_batchnorm: Model.fit runs in one process, data-parallel runs are the CLI's)
SECTION_KEYWORDS = ("schedule", "l1", "l2", "metrics", "top_k", "early_stopping", "patience",
                    "clip_norm", "clip_value")


def keyword_setting(name: str, value):
    """A train setting given as a Python keyword (Model.fit), checked as the train section checks
    it: numbers and booleans as they are; text in the section's syntax ("sgd(momentum=0.9)",
    "exponential(rate=0.5)", "early_stopping(patience=3)"); a list for metrics and augment."""
    from ..errors import SpecError
    from ..lang.elaborate import parse_setting
    from ..lang.train_section import validate_train
    try:
        if isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        if isinstance(value, str):
            return parse_setting(name, value, shown=name)
        return validate_train([(name, value, None)], None)[name]
    except SpecError as e:
        raise ConfigError(e.message + (f" ({e.hint})" if e.hint else "")) from None


def keyword_settings(section: dict | None, settings: dict) -> tuple[dict, dict]:
    """Model.fit's keywords as (the train section with its own settings replaced, flags as
    `resolve` takes them). A bare optimizer name is the --optimizer flag (the section's
    arguments are kept when it names the same optimizer); with arguments it replaces it."""
    import re
    section = dict(section or {})
    flags = {}
    for name, value in settings.items():
        if value is None:
            continue
        if name == "optimizer" and isinstance(value, str) and re.fullmatch(r"\s*\w+\s*", value):
            flags[name] = value.strip()
        elif name == "augment":
            flags[name] = ({} if value in ("none", (), []) else
                           value if isinstance(value, dict) else keyword_setting(name, value))
        elif name in ("lr", "keep"):
            flags[name] = value
        elif name in SECTION_KEYWORDS or name == "optimizer":
            section[name] = keyword_setting(name, value)
        else:
            from ..errors import did_you_mean
            known = ("epochs", "batch_size", "lr", "optimizer", "seed", "augment", "keep",
                     "validation_data", "validation_split", "loss", *SECTION_KEYWORDS)
            hint = did_you_mean(name, known)
            raise ConfigError(f"fit() has no setting '{name}'"
                              + (f" ({hint})" if hint else f"; settings: {', '.join(known)}"))
    if "lr" in flags:
        flags["lr"] = keyword_setting("lr", flags["lr"])
    return section, flags
