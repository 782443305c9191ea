"""A compiled network: call it, get losses and gradients, save and load weights.

    net = netspec.load("specs/lenet5.net", classes=10)
    model = net.compile(target="cpu", training=True)
    probs = model(x)                            # x: (N, 1, 32, 32) float32, NCHW
    loss, grads = model.loss_and_grads(x, y)    # y: (N,) integer labels ((N, H, W) for a map)
    model.params["c1.weight"]                   # (6, 1, 5, 5), PyTorch's layout
    model.save_weights("lenet5.safetensors")
    history = model.fit("digits", epochs=5)     # netspec train's run; a History (Keras-like)
    model.evaluate("digits")                    # netspec eval's scores, as a dict
    model.save("lenet5.model.safetensors")      # spec, settings, weights, normalisation:
    netspec.load_model("lenet5.model.safetensors")   # the same model back

Arrays in and out use the spec's (PyTorch's) layouts: NCHW feature maps, OIHW
conv weights. Inside, the Program keeps feature maps channels-last and conv
weights OHWI; `params` and the gradients are views that undo that permutation.
"""

from __future__ import annotations

import numpy as np

from .lower.init import draw_initial


class InputError(ValueError):
    """Data handed to a model that does not fit its inputs (shape, dtype, labels)."""


class WeightsWarning(UserWarning):
    """load_weights(force=True) left tensors of the file or of the model unmatched."""


def _user_view(buf: np.ndarray, perm) -> np.ndarray:
    return buf if perm is None else buf.transpose(np.argsort(perm))


def _readonly(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v


def _nchw(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


def _nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


def _fmt_shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


class _ParamViews(dict):
    """The parameter views: handing one out tells the executor that parameters may change,
    so tensors derived from them (folded batch norms) are recomputed before the next use."""

    def __init__(self, executor, views):
        super().__init__(views)
        self._executor = executor

    def __getitem__(self, name):
        self._executor.invalidate()
        return super().__getitem__(name)

    def get(self, name, default=None):
        self._executor.invalidate()
        return super().get(name, default)

    def values(self):
        self._executor.invalidate()
        return super().values()

    def items(self):
        self._executor.invalidate()
        return super().items()



def matching_tensors(arrays: dict, shapes: dict) -> tuple[dict, list[str]]:
    """The tensors of `arrays` that match a parameter of `shapes` ({name: shape}) by name and
    shape, and the rest in words: each tensor not taken and each parameter the file lacks,
    with why (a forced load: Model.set_matching, netspec export --force)."""
    fitting, skipped = {}, []
    for name, value in sorted(arrays.items()):
        if name not in shapes:
            skipped.append(f"{name} (not in this network)")
        elif tuple(np.shape(value)) != tuple(shapes[name]):
            skipped.append(f"{name} (shape {tuple(np.shape(value))}, here {tuple(shapes[name])})")
        else:
            fitting[name] = value
    skipped += [f"{name} (not in the file, kept)" for name in sorted(shapes) if name not in arrays]
    return fitting, skipped

class Model:
    def __init__(self, network, program, target: str = "cpu", seed: int = 0, warmup: bool = True,
                 plan_memory: bool = True, kernel_dir=None, progress: bool = False):
        from .runtime.program import Executor
        from .runtime.targets import get_target
        self.network = network
        self.program = program
        self.target = target
        self.dtype = np.dtype(program.dtype)
        self.executor = Executor(program, get_target(target), seed, plan_memory=plan_memory,
                                 kernel_dir=kernel_dir)
        tensors = program.tensors
        # views of the parameters' host arrays (a device target's: a copy the executor keeps
        # current, read back when the device holds newer values and sent before the next run)
        host = self.executor.host_state()
        self.params: dict[str, np.ndarray] = _ParamViews(self.executor, {
            name: _user_view(host[t], tensors[t].perm) for name, t in program.params.items()})
        # how raw inputs become the network's inputs: the normalisation `netspec train` stored
        # with its weights (load_weights keeps it), or None: inputs are used as given
        self.input_norm: dict | None = None
        self.class_names: list[str] | None = None     # the training data's (fit, load_weights)
        self.init_params(seed)
        if warmup:
            self.warmup(progress)

    # -- parameters
    @property
    def trainable(self) -> list[str]:
        """Names of the parameters that get gradients."""
        return list(self.program.grads)

    def init_params(self, seed: int = 0) -> None:
        """Draw every parameter (and reset running statistics) from its initialiser."""
        tensors = {name: self.program.tensors[self.program.params[name]] for name in self.params}
        values = draw_initial({name: (t.init, t.user_shape) for name, t in tensors.items()}, seed)
        for name, value in values.items():
            self.params[name][...] = value

    def _snapshot(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.executor.host_state().items()}

    def _restore(self, saved: dict[str, np.ndarray]) -> None:
        host = self.executor.host_state()
        for k, v in saved.items():
            host[k][...] = v
        self.executor.invalidate()

    def warmup(self, progress: bool = False) -> None:
        """Compile every kernel the program uses (a run at batch size 1), changing nothing;
        progress=True shows a bar over the instructions run (each compiles its kernel on first
        use, or loads it from the cache) and a count of the functions Numba compiled."""
        saved = self._snapshot()
        rng_state = self.executor.ctx.rng.bit_generator.state
        phases = [p for p in ("prepare", "infer", "train") if p in self.program.phases]
        try:
            with _WarmupBar(progress, sum(len(self.program.phases[p].instrs) for p in phases)) as step:
                self.executor.on_step = step
                x = {name: np.ones((1, *self._input_shape(name)), self.dtype)
                     for name in self.program.inputs}
                self.predict(x)
                if "train" in self.program.phases:
                    self.loss_and_grads(x, self._dummy_target())
        finally:
            self.executor.on_step = None
            self._restore(saved)
            self.executor.ctx.rng.bit_generator.state = rng_state
            self.executor.release()

    def _dummy_target(self):
        t = self.program.tensors[self.program.target]
        if t.dtype == "int32":
            return np.zeros((1, *t.shape), np.int64)
        return np.zeros((1, *_user_shape(t.shape)), self.dtype)

    # -- inputs
    def _input_shape(self, name: str) -> tuple[int, ...]:
        return self.network.graph.node(name).shape

    def _feeds(self, x) -> tuple[int, dict]:
        inputs = list(self.program.inputs)
        if not isinstance(x, dict):
            if len(inputs) != 1:
                raise InputError(f"{self.network.name} has {len(inputs)} inputs "
                                 f"({', '.join(inputs)}): pass a dict of arrays")
            x = {inputs[0]: x}
        unknown = set(x) - set(inputs)
        if unknown or len(x) != len(inputs):
            raise InputError(f"expected inputs {', '.join(inputs)}, got {', '.join(map(str, x))}")
        batch = None
        feeds = {}
        for name, value in x.items():
            want = self._input_shape(name)
            value = self._check_array(value, f"input '{name}'", want)
            if batch is not None and value.shape[0] != batch:
                raise InputError(f"inputs disagree on the batch size: {batch} vs {value.shape[0]}")
            batch = value.shape[0]
            feeds[self.program.inputs[name]] = _nhwc(value)
        return batch, feeds

    def _check_array(self, value, what: str, want: tuple[int, ...]) -> np.ndarray:
        expected = _fmt_shape(("N", *want))
        if not isinstance(value, np.ndarray):
            raise InputError(f"{what} must be a NumPy array of shape {expected}, "
                             f"got {type(value).__name__}")
        if value.dtype.kind != "f":
            raise InputError(f"{what} must be floating point ({self.dtype} is used), got "
                             f"{value.dtype}; convert it, e.g. x.astype(np.float32) / 255")
        if value.ndim != len(want) + 1 or tuple(value.shape[1:]) != tuple(want) or not value.shape[0]:
            raise InputError(f"{what} has shape {_fmt_shape(value.shape)}, expected {expected} "
                             f"(batch first{', channels before height and width: NCHW' if len(want) == 3 else ''})")
        return value

    def _target_feed(self, y, batch: int) -> np.ndarray:
        t = self.program.tensors[self.program.target]
        if not isinstance(y, np.ndarray):
            y = np.asarray(y)
        if t.dtype == "int32":
            classes = self.program.tensors[next(iter(self.program.outputs.values()))].shape[-1]
            want = (batch, *t.shape)      # (N,), or (N, H, W): a label per pixel of a map
            if y.dtype.kind not in "iu" or y.shape != want:
                raise InputError(f"labels must be integers of shape {want} for "
                                 f"{self.program.loss_name}, got {y.dtype} {_fmt_shape(y.shape)}")
            if y.size and (y.min() < 0 or y.max() >= classes):
                raise InputError(f"labels must lie in 0..{classes - 1}, got values from "
                                 f"{y.min()} to {y.max()}")
            return y
        want = _user_shape(t.shape)
        y = self._check_array(y, f"targets for {self.program.loss_name}", want)
        if y.shape[0] != batch:
            raise InputError(f"targets have {y.shape[0]} rows for a batch of {batch}")
        return _nhwc(y)

    # -- running
    def __call__(self, x):
        return self.predict(x)

    def predict(self, x, batch_size: int | None = None):
        """Outputs in inference mode (running statistics, no dropout), as new arrays.

        With `input_norm` set (weights from `netspec train`, loaded by load_weights), `x` is raw
        data as `netspec predict` reads it (uint8 images, or floats in [0, 1], any layout it
        accepts) and is prepared as the training data were; otherwise it is used as given."""
        if self.input_norm is not None and not isinstance(x, dict):
            x = self.prepare(x)
        return self._predict(x, batch_size)

    def predict_prepared(self, x, batch_size: int | None = None):
        """Outputs for inputs already prepared as the network takes them (normalised): predict
        without `input_norm`'s preparation."""
        return self._predict(x, batch_size)

    def prepare(self, raw) -> np.ndarray:
        """Raw inputs fitted and normalised as this model's training data were (`input_norm`):
        what `netspec predict` does to the files it is given."""
        from .training.data import prepare
        if self.input_norm is None:
            raise InputError("this model has no input normalisation (input_norm): its weights "
                             "were not loaded from a file netspec train wrote")
        (name,) = self.program.inputs
        return prepare(np.asarray(raw), self._input_shape(name), self.input_norm)

    def _predict(self, x, batch_size: int | None):
        if batch_size is not None:
            n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
            parts = [self._predict(_rows(x, i, i + batch_size), None) for i in range(0, n, batch_size)]
            if isinstance(parts[0], dict):
                return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            return np.concatenate(parts)
        batch, feeds = self._feeds(x)
        bufs = self.executor.run("infer", feeds, batch)
        to_host = self.executor.to_host
        outs = {name: np.array(_nchw(to_host(bufs[t]))) for name, t in self.program.outputs.items()}
        return next(iter(outs.values())) if len(outs) == 1 else outs

    def loss_and_grads(self, x, y, check: bool = False):
        """One training-mode forward and backward pass (batch statistics, dropout active;
        batch-norm running statistics are updated, as in a training step).

        Returns (loss, grads): grads maps each trainable parameter's name (and, when the
        model was compiled with input_grads=True, each input's name) to its gradient in
        the parameter's layout. The arrays are read-only views that the next call
        overwrites: copy them to keep them.
        """
        if "train" not in self.program.phases:
            raise RuntimeError("this model was compiled with training=False")
        batch, feeds = self._feeds(x)
        feeds[self.program.target] = self._target_feed(y, batch)
        bufs = self.executor.run("train", feeds, batch, check=check)
        tensors, to_host = self.program.tensors, self.executor.to_host
        grads = {name: _readonly(_user_view(to_host(bufs[g]), tensors[g].perm))
                 for name, g in self.program.grads.items()}
        for name, g in self.program.input_grads.items():
            grads[name] = _readonly(_nchw(to_host(bufs[g])))
        return self.loss_value(bufs), grads

    def loss_value(self, bufs) -> float:
        """The loss a training run left in its buffers (`train_buffers`), on the host."""
        return float(self.executor.to_host(bufs[self.program.loss]).reshape(-1)[0])

    def to_host(self, a) -> np.ndarray:
        """A buffer of `train_buffers` (a target array: on a device target, device memory) as a
        NumPy array, in the buffer's internal layout."""
        return self.executor.to_host(a)

    @property
    def optim(self):
        """The target's parameter update (runtime/optim.py's interface) for `physical_params`."""
        return self.executor.target.optim

    def train_buffers(self, x, y, after: dict | None = None) -> dict:
        """One training-mode forward and backward pass; returns the executor's buffers
        (internal layouts: channels-last maps, OHWI conv weights; the target's arrays, which
        on a device target stay on the device: `to_host` reads one) for a training loop that
        updates parameters in place (see `physical_params` and `optim`). The buffers are
        reused by the next call of the same batch size. after: instruction index -> function,
        called as the backward pass goes (Executor.run; data-parallel training's gradient
        reductions, training/distributed.py)."""
        if "train" not in self.program.phases:
            raise RuntimeError("this model was compiled with training=False")
        batch, feeds = self._feeds(x)
        feeds[self.program.target] = self._target_feed(y, batch)
        return self.executor.run("train", feeds, batch, after=after)

    def physical_params(self, names=None) -> dict:
        """Parameter buffers in the internal layout, by name (default: the trainable ones), as
        the target's arrays (on a device target, device memory: update them with `optim`).
        Elementwise updates (optimizers) need no layout: gradients share it."""
        names = self.program.grads if names is None else names
        self.executor.device_written()   # the caller will write them
        return {name: self.executor.state[self.program.params[name]] for name in names}

    # -- weights
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and running statistic, in PyTorch's layouts (copies:
        a dense layer's parameters are already in that layout, and a view of the live buffer
        would change with the next training step)."""
        return {k: np.array(v, order="C", copy=True) for k, v in self.params.items()}

    def save_weights(self, path) -> None:
        """Write every parameter (PyTorch layouts) to .safetensors or .npz, atomically."""
        from .fingerprint import metadata
        from .runtime.checkpoint import save_arrays
        from .training.metadata import WEIGHTS_FORMAT
        save_arrays(path, self.state_dict(), {"network": self.network.name, "format": WEIGHTS_FORMAT,
                                              **metadata(self.network.graph, str(self.dtype))})

    def load_weights(self, path, strict: bool = True, force: bool = False) -> list[str]:
        """Load parameters by name from .safetensors or .npz (no pickle), checking shapes.

        A file saved from another network (its stored graph hash and layout: netspec/
        fingerprint.py) is refused with what differs ('dense f6: weight 84x10 in the file,
        84x12 here'); a file without them (older netspec, other tools) is checked by its
        tensors' names and shapes. strict: every parameter must be present and nothing else.
        Otherwise the names that match are loaded and the list of loaded names is returned.
        force=True loads the tensors that match by name and shape whatever the file was saved
        from, and warns (WeightsWarning) naming the rest. A file `netspec train` wrote also
        holds how its training inputs were normalised: it becomes `input_norm`, so that
        predict takes raw inputs as `netspec predict` does.
        """
        from .fingerprint import describe
        from .runtime.checkpoint import WeightsError, load_arrays
        from .training.metadata import CHECKPOINT_FORMAT, network_differences, read_metadata
        arrays, raw_meta = load_arrays(path)
        meta = read_metadata(raw_meta, path)      # checked like any input
        if meta.format == CHECKPOINT_FORMAT:
            arrays = {k[6:]: v for k, v in arrays.items() if k.startswith("param/")}
        if force:
            loaded, skipped = self.set_matching(arrays, source=str(path), error=WeightsError)
            if skipped:
                import warnings
                warnings.warn(f"{path}: loaded {len(loaded)} of {len(self.params)} tensors; "
                              f"{describe(skipped)}", WeightsWarning, stacklevel=2)
        else:
            found = network_differences(meta, self.network.graph, str(self.dtype))
            if found:
                raise WeightsError(f"{path} was saved from a different network than "
                                   f"{self.network.name}: {describe(found)} (force=True loads the "
                                   "tensors that match)")
            loaded = self.set_weights(arrays, strict, source=str(path), error=WeightsError)
        self.input_norm = meta.norm
        self.class_names = meta.class_names
        return loaded

    def set_matching(self, arrays: dict, source: str = "weights",
                     error=ValueError) -> tuple[list[str], list[str]]:
        """Copy the tensors of `arrays` that match a parameter by name and shape (transfer
        learning, a forced load); return (the names loaded, the rest: each tensor of `arrays`
        not loaded and each parameter kept as it was, with why)."""
        fitting, skipped = matching_tensors(arrays, {k: v.shape for k, v in self.params.items()})
        loaded = self.set_weights(fitting, strict=False, source=source, error=error) if fitting else []
        return loaded, skipped

    def save(self, path) -> None:
        """Write the whole model to one .safetensors file, atomically: the spec text, the
        network's settings (`load`'s parameters and input_shape), the weights, the input
        normalisation and class names of its training data. netspec.load_model(path) builds it
        again, predicting the same on raw inputs; `netspec eval SPEC --weights path` reads it.
        No pickle: tensors and JSON metadata only."""
        import json
        from .fingerprint import metadata
        from .runtime.checkpoint import save_arrays
        from .training.metadata import WEIGHTS_FORMAT
        network = self.network
        if str(path).endswith(".npz"):
            raise ValueError(f"model.save writes .safetensors, not {path} (save_weights writes .npz)")
        if len(network.spec.files) > 1:
            raise ValueError(f"model.save stores one spec file's text, but {network.spec.main} "
                             f"imports {', '.join(network.spec.files[1:])}; save the weights "
                             "(save_weights) and keep the spec files")
        meta = {"format": WEIGHTS_FORMAT, "network": network.name, "spec": network.spec.text,
                "context": json.dumps(network.run_context()),
                "loss": self.program.loss_name or _default_loss(network.graph),
                **metadata(network.graph, str(self.dtype))}
        if self.input_norm is not None:
            meta["norm"] = json.dumps(self.input_norm)
        if self.class_names is not None:
            meta["class_names"] = json.dumps(self.class_names)
        save_arrays(path, self.state_dict(), meta)

    def export(self, path, opset: int | None = None, passes=None):
        """Write the network with its current weights as an ONNX model (`netspec export`;
        docs/INTEROP.md): after the inference passes (`passes` as compile's names; () for the
        network as written), input standardisation of its training data inside the model.
        Needs `pip install 'netspec[onnx]'`. Returns the onnx.ModelProto."""
        from . import pipeline
        from .outdirs import write_atomic
        if not str(path).lower().endswith(".onnx"):
            raise ValueError(f"model.export writes .onnx files, not {path}")
        params = {name: np.asarray(v, np.float64) for name, v in self.state_dict().items()}
        model = pipeline.export_onnx(self.network.graph, params, self.network.spec.text, passes,
                                     opset, self.input_norm)
        write_atomic(path, model.SerializeToString())
        return model

    # -- training (netspec train's Trainer) and scoring (netspec eval's)
    def fit(self, x=None, y=None, *, epochs=None, batch_size=None, validation_data=None,
            validation_split=None, callbacks=(), seed=None, out_dir=None, verbose: int = 1,
            **settings):
        """Train from the current weights as `netspec train` does, by the same Trainer: the
        spec's train section, with these keywords overriding it as the flags do. Returns a
        History (`.history["loss"]`, `.epoch`, `.plot()`).

        x: a data source as `--data` takes it ("digits", "shapes", a folder, an .npz file; None:
        the section's data, else the digits) or raw inputs, an array, with labels y.
        validation_data: a source or (x, y) arrays (instead of validation_split).
        callbacks: objects with Keras' methods, each optional: on_train_begin(logs),
        on_epoch_begin(epoch, logs), on_epoch_end(epoch, logs) (returning True or raising
        netspec.StopTraining ends the run), on_train_end(logs); epochs count from 0.
        seed: shuffling, augmentation and dropout (the weights are the model's: compile with
        the same seed to repeat `netspec train --seed S`).
        out_dir: write the run folder (checkpoints, history, curves, weights, metrics) as
        `netspec train -o` does; None writes nothing.
        settings: the train section's other settings: lr, optimizer ("adam", or with arguments
        "sgd(lr=0.05, momentum=0.9)"), loss (must be the compiled one), schedule, l1, l2,
        metrics, top_k, early_stopping, patience, clip_norm, clip_value, augment, keep.
        verbose: 0 silent, 1 netspec train's lines (and a progress bar on a terminal).
        Afterwards predict, evaluate and save take raw inputs prepared as the training data."""
        from .training.run import fit
        return fit(self, x, y, epochs=epochs, batch_size=batch_size, validation_data=validation_data,
                   validation_split=validation_split, callbacks=callbacks, seed=seed,
                   out_dir=out_dir, verbose=verbose, settings=settings)

    def evaluate(self, x=None, y=None, split: str = "test") -> dict:
        """`netspec eval --format json`'s scores of the current weights, computed by its code:
        accuracy, loss, confusion matrix, per-class precision/recall/F1. x: a data source (its
        `split`: test, val or train; None: the digits) or raw inputs (as predict takes them)
        with labels y."""
        from .training.run import evaluate
        return evaluate(self, x, y, split)

    def set_weights(self, arrays: dict, strict: bool = True, source: str = "weights",
                    error=ValueError) -> list[str]:
        """Copy `arrays` (name -> array, PyTorch layouts) into the parameters; return the names
        loaded. Everything is checked first (check_weights), so a refusal changes nothing."""
        loaded = self.check_weights(arrays, strict, source, error)
        for name in loaded:
            self.params[name][...] = arrays[name]
        return loaded

    def check_weights(self, arrays: dict, strict: bool = True, source: str = "weights",
                      error=ValueError) -> list[str]:
        """The names set_weights would load (sorted), or `error` saying what does not fit: names
        (with strict, every parameter and nothing else), shapes, dtypes (floating point only:
        the parameters are float32 or float64) and values (finite only). Writes nothing."""
        return check_weights({k: v.shape for k, v in self.params.items()}, arrays,
                             self.network.name, strict, source, error)

    def __repr__(self) -> str:
        return (f"<Model {self.network.name} on {self.target}, {self.dtype}: "
                f"{len(self.program.kernels())} kernels, {len(self.params)} parameter tensors>")


def check_weights(params: dict, arrays: dict, network: str, strict: bool = True,
                  source: str = "weights", error=ValueError) -> list[str]:
    """Model.check_weights for parameters known by their shapes alone (name -> shape, as
    training.metadata.parameter_shapes gives them before anything is compiled): the names that
    would load, or `error` naming the network `network` and what does not fit."""
    shapes = {name: np.shape(value) for name, value in arrays.items()}
    from .training.metadata import fit_problem
    problem = fit_problem(params, shapes, strict)
    if problem:
        raise error(f"{source} does not fit {network}: {problem}")
    loaded = sorted(set(arrays) & set(params))
    for name in loaded:
        value = np.asarray(arrays[name])
        if value.dtype.kind != "f":
            raise error(f"{source}: {name} has dtype {value.dtype}, expected floating point "
                        f"(float32 or float64); convert it, e.g. w.astype(np.float32)")
        bad = value.size - np.count_nonzero(np.isfinite(value))
        if bad:
            raise error(f"{source}: {name} holds {bad:,} NaN or infinite value"
                        f"{'s' if bad > 1 else ''}; weights must be finite numbers")
    return loaded


def memory_needed(network, program, batch: int, target: str,
                  plan_memory: bool = True) -> dict[str, int]:
    """Bytes a Model of `program` holds while it runs at `batch` on `target` (a registered
    name), by part: its persistent tensors (parameters, running statistics, constants), each
    phase's arena (activations, temporaries, gradients) as the runtime's memory planner lays it
    out for that target, and, with a training phase, the optimizer's slots per trainable
    parameter (as the summary counts them for the spec's optimizer)."""
    from .lang.train_section import optimizer_state
    from .pipeline import plan
    from .runtime.memory import PERSISTENT_KINDS

    def nbytes(t):
        return t.size(batch) * np.dtype(t.dtype).itemsize

    tensors = program.tensors.values()
    parts = {"parameters and state": sum(nbytes(t) for t in tensors if t.kind in PERSISTENT_KINDS)}
    for phase, p in plan(program, batch, target).items():
        parts[f"{phase} arena"] = p.arena_bytes if plan_memory else p.naive_bytes
    if "train" in program.phases:
        _, slots = optimizer_state(network.graph.train)
        trainable = sum(nbytes(program.tensors[program.params[name]]) for name in program.grads)
        parts["optimizer slots"] = slots * trainable
    return parts


def check_memory(network, program, batch: int, target: str, plan_memory: bool = True) -> None:
    """Refuse (netspec.resources.ResourceError) a model that cannot fit in the memory available
    at `batch`, before its parameters and buffers are allocated."""
    from .resources import check_fits, format_bytes
    parts = memory_needed(network, program, batch, target, plan_memory)
    detail = ", ".join(f"{k} {format_bytes(v)}" for k, v in parts.items() if v)
    check_fits(sum(parts.values()), f"{network.name} at batch {batch}",
               "make the network smaller (fewer or narrower layers, a smaller input) or the "
               "batch smaller (--batch)", detail)


def _default_loss(graph):
    from .lower.build import default_loss
    return default_loss(graph)


def _user_shape(physical_shape) -> tuple[int, ...]:
    if len(physical_shape) == 3:
        h, w, c = physical_shape
        return (c, h, w)
    return tuple(physical_shape)


def _rows(x, start, stop):
    if isinstance(x, dict):
        return {k: v[start:stop] for k, v in x.items()}
    return x[start:stop]


class _WarmupBar:
    """A transient rich progress bar for the warm-up: instructions run, functions Numba compiled
    (cache misses: a warm cache compiles none). Entering gives the per-instruction callback
    (None when disabled)."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total
        self.progress = self.listener = None

    def __enter__(self):
        if not self.enabled:
            return None
        from numba.core import event
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        self.progress = Progress(TextColumn("compiling kernels"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[compiled]} compiled"), TimeElapsedColumn(),
                                 transient=True)
        task = self.progress.add_task("warmup", total=self.total, compiled=0)
        bar = self.progress

        class Compiled(event.Listener):
            count = 0

            def on_start(self, ev):
                pass

            def on_end(self, ev):
                Compiled.count += 1
                bar.update(task, compiled=Compiled.count)

        self.listener = Compiled()
        event.register("numba:compile", self.listener)
        self.progress.start()
        return lambda: bar.advance(task)

    def __exit__(self, *exc):
        if self.progress is not None:
            from numba.core import event
            event.unregister("numba:compile", self.listener)
            self.progress.stop()
        return False

