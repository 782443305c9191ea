"""What `netspec train`, `eval` and `predict` do, apart from parsing their flags."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..paths import not_a_file
from .config import counted
from .trainer import CHECKPOINT, WEIGHTS, Trainer, TrainingError, read_checkpoint


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
    fitting, skipped = {}, []
    for name, value in sorted(arrays.items()):
        if name not in model.params:
            skipped.append(f"{name} (not in this network)")
        elif tuple(value.shape) != model.params[name].shape:
            skipped.append(f"{name} (shape {tuple(value.shape)}, here {model.params[name].shape})")
        else:
            fitting[name] = value
    if not fitting:
        raise TrainingError(f"--init-from {path}: no tensor matches this network by name and shape")
    loaded = model.set_weights(fitting, strict=False, source=str(path), error=TrainingError)
    return loaded, skipped


def renormalise(x: np.ndarray, have: dict, want: dict) -> np.ndarray:
    """Re-express data normalised with `have` in the normalisation `want` (both as
    DataSplits.norm: per-channel mean and std of [0,1]-scaled values)."""
    if have == want:
        return x
    shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)

    def arr(norm, key):
        return np.asarray(norm[key], np.float32).reshape(shape)
    return ((x * arr(have, "std") + arr(have, "mean")) - arr(want, "mean")) / arr(want, "std")


def running_statistics_note(graph, steps: int) -> str | None:
    """A warning when batch-norm running statistics (what inference uses) will still carry much
    of their initial 0/1 values at the end of the run: with Keras' momentum 0.99 that takes
    about 300 steps, and a deep network evaluated before then predicts nonsense."""
    momenta = [n.attrs.momentum for n in graph.nodes() if n.op == "batchnorm" and n.trainable]
    if not momenta:
        return None
    m = max(momenta)
    left = m ** steps
    if left <= 0.05:
        return None
    need = math.ceil(math.log(0.05) / math.log(m))
    return (f"note: batch norm's running statistics (momentum {m:g}) keep {left:.0%} of their "
            f"initial values after this run's {steps} steps, so validation and test results "
            f"(inference mode) may be poor; train for at least {need} steps or use "
            f"batchnorm(momentum=0.9)")


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
          progress: bool = False, epochs_override=None, flags: dict | None = None) -> dict:
    """A whole training run into out_dir; returns the final metrics.

    flags: the command-line settings given (name -> value, as config.resolve takes them). A new
    run has them in section_cfg already; a resumed run takes its settings from the checkpoint
    and config.resume_settings applies or refuses these (epochs_override is flags' epochs)."""
    from ..outdirs import check_run_folder
    from .data import load_data
    cfg = section_cfg
    out_dir = Path(out_dir)
    check_run_folder(out_dir, error=TrainingError)   # refuse someone else's folder at once
    ckpt = out_dir / CHECKPOINT
    arrays = meta = None
    if resume:
        problem = not_a_file(ckpt)
        if problem == "no such file":
            raise TrainingError(f"--resume: no checkpoint at {ckpt}; train without --resume first")
        if problem:
            raise TrainingError(f"--resume: {ckpt}: {problem}")
        arrays, meta = read_checkpoint(ckpt)
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
    classes = output_classes(graph, cfg["loss"])
    input_shape = graph.node(graph.inputs[0]).shape
    data = load_data(cfg["data"], input_shape, classes, cfg["validation_split"], cfg["seed"])
    if cfg.get("validation_data") is not None:
        data.val = validation_set(cfg["validation_data"], input_shape, classes, data.norm, cfg["seed"])
        if (data.val.y.ndim > 1) != (data.train.y.ndim > 1):
            raise TrainingError(f"--validation-data {cfg['validation_data']}: its labels are "
                                f"{'per pixel' if data.val.y.ndim > 1 else 'per image'}, the "
                                f"training data's are not")
    check_task(graph, cfg["loss"], data, cfg["augment"])
    cold = " (the first time takes a while; later runs use the cache)" if _cache_is_cold(target) else ""
    echo(f"compiling {network.name} for {target}{cold} ...")
    model = network.compile(target=target, training=True, loss=cfg["loss"], seed=cfg["seed"],
                            batch=min(cfg["batch"], len(data.train)),   # memory checked there
                            progress=progress)
    trainer = Trainer(network, model, data, cfg, out_dir, echo, progress, spec_text, context)
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
    note = running_statistics_note(graph, math.ceil(len(data.train) / cfg["batch"]) * cfg["epochs"])
    if note:
        echo(note)
    # frozen by the user (trainable=false, --freeze): not the state no gradient ever trains
    # (batch norms' running statistics, YOLOv8's fixed DFL weights)
    state = {f"{node.name}.{p.name}" for node in graph.nodes() for p in node.params if not p.trainable}
    frozen = [n for n in model.params if n not in model.program.grads and n not in state]
    if frozen:
        echo(f"frozen: {counted(len(frozen), 'tensor')} ({', '.join(frozen[:6])}"
             f"{' ...' if len(frozen) > 6 else ''})")
    return trainer.fit()


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
