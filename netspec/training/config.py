"""The settings of one training run: the spec's `train { }` section, then command-line flags.

`resolve` returns a plain, JSON-serialisable dict that the trainer, the
checkpoint and `config.json` share; every default is filled in here, once.
"""

from __future__ import annotations

from ..train_config import OPTIMIZERS

# what a run uses when neither the spec nor a flag says otherwise
DEFAULTS = {"loss": None, "optimizer": {"name": "adam", **OPTIMIZERS["adam"]}, "schedule": {"name": "constant"},
            "batch": 32, "epochs": 10, "l1": 0.0, "l2": 0.0, "metrics": ["accuracy"], "top_k": 5,
            "validation_split": 0.1, "early_stopping": None, "augment": {}, "clip_norm": None,
            "clip_value": None, "seed": 0, "data": None, "validation_data": None}

EARLY_STOPPING = {"monitor": "val_loss", "patience": 5, "restore_best": True, "min_delta": 0.0}


class ConfigError(ValueError):
    """A flag or setting combination that cannot run (bad optimizer name, ...)."""


def resolve(section: dict | None, *, loss: str, epochs=None, batch=None, lr=None, optimizer=None,
            seed=None, data=None, validation_split=None, validation_data=None, augment=None) -> dict:
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
        cfg["optimizer"]["lr"] = float(base_lr)
        sched = cfg["schedule"]
        if sched["name"] == "piecewise" and sched.get("lr"):
            # piecewise rates are absolute: a new base rate scales them all, so that
            # --lr 0.01 on piecewise(lr=[0.1, 0.01, 0.001]) gives [0.01, 0.001, 0.0001]
            factor = float(base_lr) / float(sched["lr"][0])
            cfg["schedule"] = {**sched, "lr": [float(r) * factor for r in sched["lr"]]}
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
    if cfg["validation_data"] is not None:  # validation comes from there, not from the training data
        cfg["validation_split"] = 0.0
    if cfg["validation_split"] == 0 and cfg["validation_data"] is None and es and es["monitor"].startswith("val_"):
        es["monitor"] = es["monitor"][4:]
    return cfg


def optimizer_kwargs(cfg: dict) -> dict:
    """The optimizer's arguments other than lr, as netspec.runtime.optim takes them."""
    return {k: v for k, v in cfg["optimizer"].items() if k not in ("name", "lr")}


def describe(cfg: dict) -> str:
    opt = cfg["optimizer"]
    args = ", ".join(f"{k}={v}" for k, v in opt.items() if k != "name")
    parts = [f"{opt['name']}({args})", f"batch {cfg['batch']}", f"{cfg['epochs']} epochs",
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
    return ", ".join(parts)
