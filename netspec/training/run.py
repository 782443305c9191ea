"""What `netspec train`, `eval` and `predict` do, apart from parsing their flags."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..paths import not_a_file
from .config import counted
from .distributed import DEFAULT_BUCKET_MB
from .trainer import (CHECKPOINT, WEIGHTS, Trainer, TrainingError, read_checkpoint,
                      running_statistics_note)  # noqa: F401 (where callers found it)


def apply_freeze(graph, labels: list[str]) -> list[str]:
    """Mark the nodes named (or inside the blocks named) by `labels` non-trainable.
    Returns the frozen node names; an unknown label is a TrainingError with a hint."""
    frozen = []
    for label in labels:
        hits = [n for n in graph.nodes() if n.name == label or n.name.startswith(label + "/")
                or n.label == label]
        if not hits:
            from ..errors import did_you_mean
            names = [n.name for n in graph.nodes() if n.params] + list(graph.blocks)
            hint = did_you_mean(label, names)
            raise TrainingError(f"--freeze: no layer or block '{label}' in {graph.name}"
                                + (f" ({hint})" if hint else
                                   f"; layers with parameters: {', '.join(names[:12])}"))
        for node in hits:
            node.trainable = False
            frozen.append(node.name)
    return frozen


def init_from(model, path) -> tuple[list[str], list[str]]:
    """Load the tensors of a weights file or checkpoint whose name and shape match
    (transfer learning). Returns (loaded, skipped-with-reason)."""
    arrays, _ = load_trained(path)
    if not any(name in model.params and tuple(np.shape(v)) == model.params[name].shape
               for name, v in arrays.items()):
        raise TrainingError(f"--init-from {path}: no tensor matches this network by name and shape")
    loaded, skipped = model.set_matching(arrays, source=str(path), error=TrainingError)
    # the network's own tensors the file lacks stay fresh: the point of transfer learning
    return loaded, [s for s in skipped if not s.endswith("(not in the file, kept)")]


def renormalise(x: np.ndarray, have: dict, want: dict) -> np.ndarray:
    """Re-express data normalised with `have` in the normalisation `want` (both as
    DataSplits.norm: per-channel mean and std of [0,1]-scaled values)."""
    if have == want:
        return x
    shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)

    def arr(norm, key):
        return np.asarray(norm[key], np.float32).reshape(shape)
    return ((x * arr(have, "std") + arr(have, "mean")) - arr(want, "mean")) / arr(want, "std")


CROSS_ENTROPIES = ("sparse_categorical_crossentropy", "categorical_crossentropy")


def classifies_pixels(graph, loss: str) -> bool:
    """Whether training classifies each pixel: a softmax cross-entropy on a map output
    (classes@HxW, the loss the mean over the pixels: segmentation)."""
    return loss in CROSS_ENTROPIES and len(graph.node(graph.outputs[0]).shape) == 3


def output_classes(graph, loss: str) -> int:
    """The classes the data's labels may use: a map's channels when it classifies pixels, else
    the output's units."""
    shape = graph.shape_of(graph.outputs[0])
    return shape[0] if classifies_pixels(graph, loss) else math.prod(shape)


def check_task(graph, loss: str, data, augment: dict | None = None) -> None:
    """Refuse data whose labels do not fit what the network's output classifies: a class per
    pixel (masks (N, H, W) of the output's HxW) for a segmentation network, a label per sample
    otherwise; and augmentations that move pixels, which would leave the masks behind."""
    out = graph.node(graph.outputs[0])
    shape = "x".join(map(str, out.shape[1:]))
    masks = data.train.y.ndim > 1
    if classifies_pixels(graph, loss) and not masks:
        raise TrainingError(f"{loss} on {graph.name}'s output {out.shape[0]}@{shape} classifies each "
                            f"pixel, so it needs a class per pixel, but {data.source} has one label "
                            "per image: train on segmentation masks (--data shapes), or end the "
                            "network in a vector of classes")
    if masks and not classifies_pixels(graph, loss):
        what = f"{out.shape[0]}@{shape}" if len(out.shape) == 3 else str(out.shape[0])
        raise TrainingError(f"{data.source} has a class per pixel but {graph.name}'s output {what} "
                            f"trained with {loss} does not classify pixels: a segmentation network "
                            "ends in a map of classes, e.g. conv(classes, 1) -> softmax at its "
                            "input's size, trained with sparse_categorical_crossentropy")
    if masks and tuple(data.train.y.shape[1:]) != tuple(out.shape[1:]):
        h, w = data.train.y.shape[1:]
        raise TrainingError(f"{data.source}: the masks are {h}x{w} but {graph.name}'s output is "
                            f"{out.shape[0]}@{shape}: the output must have the input's size "
                            "(pad its convolutions)")
    moving = [a for a in ("shift", "crop", "flip") if a in (augment or {})]
    if masks and moving:
        raise TrainingError(f"augment {', '.join(moving)} moves the pixels of the images but not of "
                            "their masks: use brightness only (or none) for segmentation")


def validation_set(source, input_shape, classes: int, norm: dict, seed: int):
    """Every sample of `source` as one validation set, normalised as the training data is."""
    from .data import Dataset, load_data
    extra = load_data(source, input_shape, classes, 0.0, seed)
    parts = [d for d in (extra.train, extra.val, extra.test) if d is not None and len(d)]
    return Dataset(np.concatenate([renormalise(d.x, extra.norm, norm) for d in parts]),
                   np.concatenate([d.y for d in parts]))


def _cache_is_cold(target: str) -> bool:
    """Whether compiling will take a while: the CPU target's kernel cache is empty (another
    target's, which netspec cannot see into, counts as cold)."""
    if target != "cpu":
        return True
    from ..runtime.cpu.context import kernel_cache_is_cold
    return kernel_cache_is_cold()


def train(network, spec_text: str, context: dict, section_cfg: dict, out_dir: Path, *,
          target: str = "cpu", resume: bool = False, init_path=None, echo=print,
          progress: bool = False, epochs_override=None, flags: dict | None = None,
          comm=None) -> dict:
    """A whole training run into out_dir; returns the final metrics.

    flags: the command-line settings given (name -> value, as config.resolve takes them). A new
    run has them in section_cfg already; a resumed run takes its settings from the checkpoint
    and config.resume_settings applies or refuses these (epochs_override is flags' epochs).
    comm: this process's rank of a data-parallel run (training/distributed.py), or None: rank 0
    alone reads the checkpoint, writes the run folder and speaks."""
    from ..outdirs import check_run_folder
    from .distributed import agree, for_target, share, silent
    cfg = section_cfg
    out_dir = Path(out_dir)
    speaks = comm is None or comm.rank == 0
    if not speaks:
        echo, progress = silent, False

    ckpt = out_dir / CHECKPOINT

    def read():
        """The run folder checked and, for --resume, its checkpoint: on rank 0 alone, whose
        machine holds the run folder (share gives the others the checkpoint)."""
        check_run_folder(out_dir, error=TrainingError)   # refuse someone else's folder at once
        if not resume:
            return None, None
        problem = not_a_file(ckpt)
        if problem == "no such file":
            raise TrainingError(f"--resume: no checkpoint at {ckpt}; train without --resume first")
        if problem:
            raise TrainingError(f"--resume: {ckpt}: {problem}")
        return read_checkpoint(ckpt)
    arrays, meta = share(comm, read)
    # which GPU each process takes, and whether NCCL sums the gradients: before compiling
    comm, through_host = for_target(comm, target)

    def setup() -> Trainer:     # no collective operation in here: agree() follows it
        nonlocal cfg
        if resume:
            from .metadata import refuse_other_network
            refuse_other_network(meta, network.graph, force_hint="--init-from starts a new run from "
                                 "the tensors that match")
            if meta.get("spec") != spec_text:
                raise TrainingError(f"--resume: {ckpt} was written for a different spec text; "
                                    "use --init-from to start a new run from its weights")
            if json.loads(meta.get("context", "{}")) != context:
                raise TrainingError(f"--resume: {ckpt} was written with other settings "
                                    f"({meta.get('context')}); repeat them, or start a new run")
            from .config import resume_settings
            given = dict(flags or {})
            if epochs_override is not None:
                given["epochs"] = epochs_override
            cfg, changed = resume_settings(json.loads(meta["config"]), given, ckpt)
        graph = network.graph
        data = run_data(graph, cfg)
        cold = " (the first time takes a while; later runs use the cache)" if _cache_is_cold(target) else ""
        echo(f"compiling {network.name} for {target}{cold} ...")
        model = network.compile(target=target, training=True, loss=cfg["loss"], seed=cfg["seed"],
                                batch=min(cfg["batch"], len(data.train)),   # memory checked there
                                progress=progress,
                                sync_batchnorm=comm is not None and bool(cfg.get("sync_batchnorm")))
        trainer = Trainer(network, model, data, cfg, out_dir if speaks else None, echo, progress,
                          spec_text, context, comm=comm)
        if comm is not None:
            echo(f"data-parallel over {comm.size} ranks: {_shards(cfg['batch'], comm.size)} of each "
                 f"batch of {cfg['batch']}, gradients summed in {trainer.reducer.bucket_count} "
                 f"bucket(s) of up to {cfg.get('bucket_mb') or DEFAULT_BUCKET_MB:g} MB"
                 + (" by NCCL on the GPUs" if not comm.on_host else
                    f" through the host ({through_host})" if through_host else "")
                 + _synchronised(trainer.batch_sums.layers if cfg.get("sync_batchnorm") else None))
        if resume:
            trainer.restore(arrays, meta)
            echo(f"resuming from {ckpt}: {counted(trainer.state.epoch, 'epoch')} done, step {trainer.state.step}")
            for line in changed:
                echo(f"  {line}")
            if trainer.state.epoch >= cfg["epochs"] or trainer.state.stopped_early:
                echo("nothing left to train (raise --epochs to continue)")
        elif init_path is not None:
            loaded, skipped = init_from(model, init_path)
            echo(f"initialised {len(loaded)} tensors from {init_path}"
                 + (f"; kept fresh: {', '.join(skipped)}" if skipped else ""))
        return trainer

    # a failure on any rank (its data, the checkpoint, a compile) is reported once, by rank 0
    return agree(comm, setup).fit()


def _synchronised(layers: int | None) -> str:
    """What sync_batchnorm does in this run (None: not asked for)."""
    if layers is None:
        return ""
    if not layers:
        return "; sync_batchnorm: no batch norm in training mode to synchronise"
    return f"; {counted(layers, 'batch norm')} synchronised (the global batch's statistics)"


def _shards(batch: int, ranks: int) -> str:
    """'16 samples per rank', or '8 or 7 samples per rank' when the batch does not divide."""
    base, extra = divmod(batch, ranks)
    return (f"{base} samples per rank" if not extra else
            f"{base + 1} or {base} samples per rank (weighted by size)")


def run_data(graph, cfg: dict, data=None, validation_data=None):
    """The data splits of a run with settings `cfg`, checked against what the network's output
    classifies: cfg's data and validation_data, unless given here (arrays (x, y) from Python,
    which cfg records by name only, data.ARRAYS)."""
    from .data import load_data
    data = cfg["data"] if data is None else data
    validation_data = cfg.get("validation_data") if validation_data is None else validation_data
    classes = output_classes(graph, cfg["loss"])
    input_shape = graph.node(graph.inputs[0]).shape
    splits = load_data(data, input_shape, classes, cfg["validation_split"], cfg["seed"])
    if validation_data is not None:
        splits.val = validation_set(validation_data, input_shape, classes, splits.norm, cfg["seed"])
        if (splits.val.y.ndim > 1) != (splits.train.y.ndim > 1):
            shown = cfg.get("validation_data") or "validation_data"
            raise TrainingError(f"--validation-data {shown}: its labels are "
                                f"{'per pixel' if splits.val.y.ndim > 1 else 'per image'}, the "
                                f"training data's are not")
    check_task(graph, cfg["loss"], splits, cfg["augment"])
    return splits


def load_trained(weights_path) -> tuple[dict, dict]:
    """(arrays, metadata) of a weights file or checkpoint: the parameters (a checkpoint's
    param/ tensors) and the metadata checked (training.metadata.Metadata, a dict of the
    strings with the parsed values as attributes)."""
    from ..runtime.checkpoint import WeightsError, load_arrays
    from .metadata import CHECKPOINT_FORMAT, read_metadata
    try:
        arrays, raw = load_arrays(weights_path)
    except WeightsError as e:
        raise TrainingError(str(e)) from None
    meta = read_metadata(raw, weights_path, checkpoint=raw.get("format") == CHECKPOINT_FORMAT)
    if meta.checkpoint:
        arrays = {k[6:]: v for k, v in arrays.items() if k.startswith("param/")}
    return arrays, meta


def default_weights(out_dir: Path) -> Path:
    return Path(out_dir) / WEIGHTS


# ---------------------------------------------------------------- the Python API (Model)

def fit(model, data, y=None, *, epochs=None, batch_size=None, validation_data=None,
        validation_split=None, callbacks=(), seed=None, out_dir=None, verbose: int = 1,
        settings: dict | None = None):
    """Model.fit: the run `netspec train` makes, on a compiled model and its current weights;
    see Model.fit. Returns a History."""
    from ..lower.build import default_loss
    from . import config as C
    from .history import History
    network, graph = model.network, model.network.graph
    if "train" not in model.program.phases:
        raise TrainingError("this model was compiled with training=False: compile it with "
                            "training=True (the default) to fit it")
    settings = dict(settings or {})
    loss = settings.pop("loss", None)
    if loss is not None and loss != model.program.loss_name:
        raise TrainingError(f"this model was compiled with loss {model.program.loss_name}: compile "
                            f"it with loss={loss!r} to train with {loss}")
    source, shown = _data_argument(data, y, "x")
    val_source, val_shown = ((None, None) if validation_data is None else
                             _data_argument(*_pair(validation_data), "validation_data"))
    section, flags = C.keyword_settings(graph.train, settings)
    cfg = C.resolve(section, loss=model.program.loss_name or default_loss(graph), epochs=epochs,
                    batch=batch_size, seed=seed, data=shown, validation_split=validation_split,
                    validation_data=val_shown, **flags)
    splits = run_data(graph, cfg, source, val_source)
    echo = print if verbose else _silent
    if out_dir is not None:
        from ..outdirs import check_run_folder
        check_run_folder(Path(out_dir), error=TrainingError)
    context = network.run_context()
    trainer = Trainer(network, model, splits, cfg, out_dir, echo, progress=verbose == 1 and _terminal(),
                      spec_text=network.spec.text, context=context, callbacks=callbacks)
    result = trainer.fit()
    # the data were standardised for training: the model now prepares raw inputs the same way
    # in predict and evaluate, and save keeps how
    model.input_norm = splits.norm
    model.class_names = list(splits.class_names)
    return History(network.name, trainer.state.history, result)


def _pair(value):
    """validation_data: a source, or arrays (x, y)."""
    if isinstance(value, tuple):
        if len(value) != 2:
            raise TrainingError(f"validation_data is a data source or a pair (x, y), got "
                                f"{len(value)} items")
        return value
    return value, None


def _data_argument(data, y, name: str):
    """(what load_data reads, what the settings record) for fit's data argument: a source
    (`netspec train --data`'s forms: "digits", a path) or arrays x with labels y."""
    import os
    from .data import ARRAYS
    if data is None or isinstance(data, (str, os.PathLike)):
        if y is not None:
            raise TrainingError(f"{name} is a data source ({data!r}), which holds its own labels: "
                                "give y only with arrays")
        return data, (None if data is None else str(data))
    if y is None:
        raise TrainingError(f"{name} is an array: give its labels too ({name}, y)")
    return (np.asarray(data), np.asarray(y)), ARRAYS


def _silent(*args, **kwargs) -> None:
    pass


def _terminal() -> bool:
    import sys
    return sys.stdout.isatty()


def score(graph, model, x, labels, loss: str, norm: dict | None, class_names: list[str],
          split: str) -> dict:
    """What `netspec eval` reports for inputs `x` prepared for the network and their labels:
    accuracy, loss, confusion matrix, per-class precision/recall/F1 (per pixel for a
    segmentation network, with each class's IoU and their mean)."""
    from ..lower.build import outputs_probabilities
    from . import metrics as M
    from .trainer import make_targets
    classes = model.program.tensors[next(iter(model.program.outputs.values()))].shape[-1]
    out = model.predict_prepared(x, batch_size=256)
    targets = make_targets(loss, labels, x, graph.shape_of(graph.outputs[0]), np.float64, norm)
    names = list(class_names)[:max(classes, 2)]
    names += [str(i) for i in range(len(names), max(classes, 2))]
    rows, flat = M.class_rows(out, labels)          # a row per sample, or per pixel
    counts = M.confusion_matrix(flat, M.predicted_classes(rows), max(classes, 2))
    scores = M.per_class_scores(counts)
    per_pixel = classifies_pixels(graph, loss)
    if per_pixel:
        scores["iou"] = M.intersection_over_union(counts)

    def number(key, v):
        return int(v) if key == "support" else (None if np.isnan(v) else float(v))
    result = {"split": split, "samples": len(labels), "accuracy": M.accuracy(out, labels),
              "loss": M.loss_value(loss, out, targets, outputs_probabilities(graph)),
              "confusion_matrix": counts.tolist(),
              "per_class": [{"class": names[i], **{k: number(k, v[i]) for k, v in scores.items()}}
                            for i in range(len(counts))]}
    if per_pixel:
        result["pixels"] = int(flat.size)
        result["mean_iou"] = M.mean_iou(counts)
    return result


def evaluate(model, data, y=None, split: str = "test") -> dict:
    """Model.evaluate: `netspec eval`'s scores of the model's current weights on a data source
    (its `split`) or on arrays x, y (raw as predict takes them)."""
    from ..lower.build import default_loss
    from .data import load_data
    from .metadata import UNSCALED_NORM
    graph = model.network.graph
    loss = model.program.loss_name or default_loss(graph)
    source, _ = _data_argument(data, y, "x")
    names = getattr(model, "class_names", None) or []
    if isinstance(source, tuple):
        x, labels = source
        x = model.prepare(x) if model.input_norm is not None else x
        return score(graph, model, x, labels, loss, model.input_norm, names, "arrays")
    classes = model.program.tensors[next(iter(model.program.outputs.values()))].shape[-1]
    splits = load_data(source, graph.node(graph.inputs[0]).shape, classes)
    check_task(graph, loss, splits)
    ds = getattr(splits, split)
    if ds is None or not len(ds):
        raise TrainingError(f"{splits.source} has no {split} split")
    norm = model.input_norm or UNSCALED_NORM
    return score(graph, model, renormalise(ds.x, splits.norm, norm), ds.y, loss, norm,
                 names or splits.class_names, split)
