"""The training loop behind `netspec train`: epochs of mini-batch steps, validation,
early stopping, checkpoints, history and learning curves.

A run may write its files into one output folder (`netspec train` always does; `Model.fit`
only when given `out_dir`, as Keras writes nothing unless asked):
    checkpoint.safetensors  everything needed to continue exactly (--resume): weights,
                            optimizer slots, best weights, step, epoch, random states,
                            history, the resolved settings and the spec text
    weights.safetensors     the best epoch's weights by the monitored metric (or the last
                            epoch's: --keep last), with how inputs were normalised
    history.json / .csv     per epoch: loss, metrics, validation metrics, lr, seconds
    learning_curves.png/svg the history drawn
    metrics.json            test_loss and test metrics on held-out data, and whose weights
Every file is written to a temporary name and renamed, so a crash leaves the
previous version whole. Without a folder the same loop runs and writes nothing: the weights
stay in the model and the history is returned. A loss that becomes NaN or infinite, or explodes against the
run's own scale, stops the run before that update (Diverged); the checkpoint stays the
last good epoch's and weights.safetensors gets the best weights.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import StopTraining, TrainingError
from ..lower.build import outputs_probabilities
from ..outdirs import write_atomic
from . import metrics as M
from .config import counted, describe, keep_default, optimizer_kwargs
from .metadata import CHECKPOINT_FORMAT, WEIGHTS_FORMAT, read_metadata

CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "weights.safetensors"


class Diverged(TrainingError):
    """The loss became NaN or infinite, or exploded; `where` is (epoch, batch, step), 1-based."""

    def __init__(self, message: str, where: tuple[int, int, int], loss: float, lr: float):
        super().__init__(message)
        self.where, self.loss, self.lr = where, loss, lr


# A finite loss that explodes: lr 1e6 on LeNet-5 gives 9e4 at the second batch and 1e7 after,
# never NaN. It is judged against the run's own scale, fixed at its first batch: the larger of
# that batch's loss (the initial weights', before any update, so no learning rate has inflated
# it) and the loss of an uninformed guess (ln(classes) for cross-entropy, ln 2 for binary
# cross-entropy, the mean squared target for MSE: a floor for a run that starts from trained
# weights with a tiny loss, so that a noisy 0.3 batch after 0.001 never counts). A batch loss
# over DIVERGENCE_FACTOR times that scale has diverged. A later low loss never lowers the scale,
# so noisy batches and schedules that raise the rate are judged against the start. Healthy runs
# stay far below: LeNet-5, the MLPs and the autoencoder on the digits with their train sections
# never pass 1.2x their first loss; the harshest first steps measured (Adam at lr 0.01 on
# fashion_cnn, Adam at lr 0.1 on mlp) spike to 1,041 and 1,077, 172x and 405x their first
# batch's loss: still 25x below (tests/test_hostile_training.py keeps the specs 10x below).
DIVERGENCE_FACTOR = 1e4


def uninformed_loss(loss: str, units: int, targets: np.ndarray) -> float:
    """The loss of a prediction that knows nothing: uniform class probabilities, one half for a
    binary output, zeros for MSE (then the loss is the mean squared target)."""
    if loss in ("sparse_categorical_crossentropy", "categorical_crossentropy"):
        return math.log(units)
    if loss == "binary_crossentropy":
        return math.log(2)
    return float(np.mean(np.square(targets, dtype=np.float64)))


# ---------------------------------------------------------------- targets

def make_targets(loss: str, labels: np.ndarray, x: np.ndarray, out_shape: tuple, dtype,
                 norm: dict | None = None) -> np.ndarray:
    """The training target for `loss` from class labels, or for an autoencoder (MSE, output
    shaped like the input) the input itself, in its [0, 1] scale rather than standardised:
    what a sigmoid output layer can reach. Labels per pixel (N, H, W) give one-hot maps
    (N, classes, H, W) where the loss wants arrays."""
    if loss == "sparse_categorical_crossentropy":
        return labels
    if labels.ndim > 1:
        if loss == "binary_crossentropy" and out_shape[0] == 1:
            return labels.astype(dtype)[:, None]
        return np.moveaxis(np.eye(out_shape[0], dtype=dtype)[labels], -1, 1)
    if loss == "mse" and tuple(out_shape) == tuple(x.shape[1:]):
        if norm is None:
            return x
        shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
        std = np.asarray(norm["std"], x.dtype).reshape(shape)
        mean = np.asarray(norm["mean"], x.dtype).reshape(shape)
        return (x * std + mean).astype(dtype)
    units = math.prod(out_shape)
    if loss == "binary_crossentropy" and units == 1:
        return labels.astype(dtype).reshape(len(labels), *out_shape)
    onehot = np.zeros((len(labels), units), dtype)
    onehot[np.arange(len(labels)), labels] = 1
    return onehot.reshape(len(labels), *out_shape)


# ---------------------------------------------------------------- the run

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



@dataclass
class RunState:
    epoch: int = 0          # epochs completed
    step: int = 0           # optimizer steps taken
    history: list = field(default_factory=list)
    best: float | None = None        # the monitored metric's best value (Trainer.monitor)
    best_epoch: int | None = None
    wait: int = 0                    # epochs since the best (early stopping's patience)
    stopped_early: bool = False
    loss_scale: float | None = None  # what divergence is judged against (DIVERGENCE_FACTOR)


class Trainer:
    """Trains a compiled Model on DataSplits with a resolved config (training.config)."""

    def __init__(self, network, model, data, cfg: dict, out_dir, echo=print, progress: bool = False,
                 spec_text: str = "", context: dict | None = None, callbacks=(), comm=None):
        self.network = network
        self.model = model
        self.data = data
        self.cfg = cfg
        self.out = None if out_dir is None else Path(out_dir)   # None: no files
        # objects with Keras' callback methods (each optional): on_train_begin(logs),
        # on_epoch_begin(epoch, logs), on_epoch_end(epoch, logs), on_train_end(logs); epoch from 0
        self.callbacks = list(callbacks or ())
        self.echo = echo
        self.progress = progress
        self.spec_text = spec_text
        self.context = context or {}   # how the network was built (sets, input, freeze): for resume
        self.program = model.program
        graph = network.graph
        self.out_shape = graph.shape_of(graph.outputs[0])
        self.probabilities = outputs_probabilities(graph)
        # a class per pixel (segmentation masks, checked against the output by run.check_task):
        # every pixel is one example of the metrics, and mean IoU is always recorded
        self.per_pixel = data.train.y.ndim > 1
        self.classes = self.out_shape[0] if self.per_pixel else max(math.prod(self.out_shape), 2)
        self.metrics = [m for m in cfg["metrics"] if m != "loss"]
        if self.per_pixel and "mean_iou" not in self.metrics:
            self.metrics.append("mean_iou")
        # the parameters as the target's arrays (on a device target they stay on the device)
        # and the target's update rules for them
        self.params = model.physical_params()
        self.optim = model.optim
        self.optimizer = self.optim.make_optimizer(cfg["optimizer"]["name"], self.params,
                                                   **optimizer_kwargs(cfg))
        self.penalty_groups = self._penalty_groups(graph)
        self.rng = np.random.default_rng(cfg["seed"])   # shuffling and augmentation
        self.state = RunState()
        # data-parallel training (training/distributed.py): this process is one of comm.size
        # ranks; rank 0 alone gets an out_dir, echo and progress (run.train sees to it)
        self.comm = comm
        self.reducer = None
        if comm is not None:
            from .distributed import DEFAULT_BUCKET_MB, BatchSums, GradientReducer, running_state_names
            self.reducer = GradientReducer(model, comm, cfg.get("bucket_mb") or DEFAULT_BUCKET_MB)
            self.batch_sums = BatchSums(model, comm)     # none unless compiled with sync_batchnorm
            self.running_state = running_state_names(model)
            self._seed_dropout()
        self.best_weights: dict[str, np.ndarray] | None = None
        # without a run folder, the last epoch's weights are kept here for a divergence
        # (with one, the checkpoint holds them)
        self.last_weights: dict[str, np.ndarray] | None = None

    def _seed_dropout(self) -> None:
        """Ranks other than 0 draw their dropout masks from a stream of their own (rank 0's is
        the one a checkpoint keeps); seeded by the step too, so a resumed run differs from a
        fresh one only there."""
        if self.comm is not None and self.comm.rank > 0:
            rng = np.random.default_rng([self.cfg["seed"], self.comm.rank, self.state.step])
            self.model.executor.ctx.rng.bit_generator.state = rng.bit_generator.state

    def _penalty_groups(self, graph) -> dict[tuple[float, float], list[str]]:
        """(l1, l2) -> the trainable weights it applies to: a layer's own l1=/l2= (or its
        block's), else the train section's global l1/l2; weights only (Op.penalised)."""
        groups: dict[tuple[float, float], list[str]] = {}
        # a parameter's name may hold dots itself (attention's out_proj.weight)
        owners = {f"{n.name}.{p.name}": (n, p.name) for n in graph.nodes() for p in n.params}
        for name in self.params:
            node, pname = owners.get(name, (None, None))
            if node is None or pname not in node.opdef.penalised:
                continue
            own = node.penalty or {}
            key = (own.get("l1", self.cfg["l1"]), own.get("l2", self.cfg["l2"]))
            if key != (0.0, 0.0):
                groups.setdefault(key, []).append(name)
        return groups

    # -- one pass over the training data
    def _steps_per_epoch(self) -> int:
        return math.ceil(len(self.data.train) / self.cfg["batch"])

    def _lr(self) -> float:
        from ..runtime.optim import schedule_lr
        sched = dict(self.cfg["schedule"])
        name = sched.pop("name")
        total = self._steps_per_epoch() * self.cfg["epochs"]
        try:
            return schedule_lr(name, self.cfg["optimizer"]["lr"], self.state.step, self.state.epoch,
                               total, **sched)
        except ValueError as e:   # the section's schedule arguments are stored as written
            raise TrainingError(f"train section: {e}") from None

    def _check_loss(self, loss: float, lr: float, batch: int, targets: np.ndarray) -> None:
        """Diverged when the loss is not finite or explodes (DIVERGENCE_FACTOR); the first
        batch of a run fixes the scale."""
        st = self.state
        where = (st.epoch + 1, batch, st.step + 1)
        at = f"epoch {where[0]}, batch {where[1]} (step {where[2]})"
        if not math.isfinite(loss):
            what = f"the loss became {loss} at {at}"
        elif st.loss_scale is None:
            units = self.out_shape[0] if self.per_pixel else math.prod(self.out_shape)
            guess = uninformed_loss(self.cfg["loss"], units, targets)
            st.loss_scale = max(loss, guess)
            return
        elif loss > DIVERGENCE_FACTOR * st.loss_scale:
            what = (f"the loss exploded to {loss:.4g} at {at}: over {DIVERGENCE_FACTOR:,.0f} times "
                    f"this run's scale, {st.loss_scale:.4g} (the larger of its first batch's loss "
                    f"and an uninformed guess's)")
        else:
            return
        raise self._diverged(what, lr, where, loss, "That update was not applied.")

    def _check_weights(self, loss: float, lr: float, batch: int) -> None:
        """An update can make the weights NaN or infinite while its batch's loss was finite;
        the next batch's loss says so, but after an epoch's last update the epoch would end and
        be kept (checkpointed, perhaps as the best). So the weights are checked as it ends."""
        bad = [name for name, value in self.params.items()
               if not np.isfinite(self.model.to_host(value)).all()]
        if bad:
            st = self.state
            where = (st.epoch + 1, batch, st.step)
            more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
            raise self._diverged(f"the update at epoch {where[0]}, batch {batch} (step {st.step}) "
                                 f"made {bad[0]}{more} NaN or infinite (that batch's loss was "
                                 f"{loss:.4g})", lr, where, loss, "This epoch is not kept.")

    def _diverged(self, what: str, lr: float, where: tuple, loss: float, kept: str) -> "Diverged":
        clip = ("" if self.cfg["clip_norm"] else
                " or clip the gradients (clip_norm = 1.0 in the train section)")
        return Diverged(f"training diverged: {what}, with learning rate {lr:g}. {kept} Lower the "
                        f"learning rate (--lr, which also scales a piecewise schedule){clip}.",
                        where, loss, lr)

    def _train_epoch(self, bar=None) -> dict:
        from .data import augment, batches
        optim = self.optim
        cfg, prog, train = self.cfg, self.program, self.data.train
        total_loss = correct = topk = seen = 0.0
        counts = np.zeros((self.classes, self.classes), np.int64)   # pixels (or samples) by class
        k = cfg["top_k"]
        comm = self.comm
        for i, idx in enumerate(batches(len(train), cfg["batch"], self.rng)):
            x, y = train.x[idx], train.y[idx]
            if cfg["augment"]:    # the whole batch on every rank: the same random stream as one rank's
                x = augment(x, cfg["augment"], self.rng, norm=self.data.norm)
            lr = self._lr()
            if comm is not None:
                from .distributed import fault_point_step, shard
                fault_point_step(comm)
                global_x, global_y, batch_size = x, y, len(idx)
                part = shard(np.arange(len(idx)), comm.rank, comm.size)
                x, y = x[part], y[part]
            targets = make_targets(cfg["loss"], y, x, self.out_shape, self.model.dtype, self.data.norm)
            if comm is None:
                bufs = self.model.train_buffers(x, targets)
                loss = self.model.loss_value(bufs)
                grads = {name: bufs[g] for name, g in prog.grads.items()}
            else:
                bufs, loss, grads, sums, rows = self._distributed_step(x, y, targets, batch_size)
                if self.state.loss_scale is None:   # judged on the global batch, alike everywhere
                    targets = make_targets(cfg["loss"], global_y, global_x, self.out_shape,
                                           self.model.dtype, self.data.norm)
            for (l1, l2), names in self.penalty_groups.items():
                pen = {n: self.params[n] for n in names}
                loss += optim.penalty(pen, l1, l2)
                optim.add_penalty_grads({n: grads[n] for n in names}, pen, l1, l2)
            self._check_loss(loss, lr, i + 1, targets)
            if cfg["clip_value"]:
                optim.clip_by_value(grads, cfg["clip_value"])
            if cfg["clip_norm"]:
                optim.clip_by_global_norm(grads, cfg["clip_norm"])
            with np.errstate(over="ignore", invalid="ignore"):   # _check_weights says it
                self.optimizer.step(grads, lr)
            self.state.step += 1
            if comm is None:
                sums, rows = self._batch_sums(bufs, y)
            n = len(idx)        # the global batch (every rank's rows: sums are all-reduced)
            total_loss += loss * n
            correct += float(sums[1])
            topk += float(sums[2])
            if "mean_iou" in self.metrics and rows is not None:   # this rank's rows only
                counts += M.confusion_matrix(rows[1], M.predicted_classes(rows[0]), self.classes)
            seen += n
            if bar is not None:
                bar(i + 1, total_loss / seen, correct / seen)
        if comm is not None and "mean_iou" in self.metrics:
            comm.allreduce_sum(counts)
        self._check_weights(loss, lr, i + 1)
        row = {"loss": total_loss / seen}
        if "accuracy" in self.metrics:
            row["accuracy"] = correct / seen
        if "top_k" in self.metrics:
            row[f"top_{k}"] = topk / seen
        if "mean_iou" in self.metrics:
            row["mean_iou"] = M.mean_iou(counts)
        return row

    def _distributed_step(self, x, y, targets, batch_size: int):
        """This rank's forward and backward pass on its shard, its gradients summed with the
        other ranks' as they complete (distributed.GradientReducer). Returns (buffers, the
        global batch's mean loss, the global gradients, the global batch's sums: [loss, correct,
        top-k hits])."""
        from .distributed import join_hooks
        n = len(y)
        bufs = self.model.executor.buffers("train", n) if n else None
        hooks = join_hooks(self.batch_sums.hooks(bufs, n / batch_size),
                           self.reducer.begin(bufs, n / batch_size))
        if n:
            bufs = self.model.train_buffers(x, targets, after=hooks)
        else:   # a last batch smaller than the number of ranks leaves this one nothing: it still
            for k in sorted(hooks):     # takes part in every sum, in order, with zeros
                hooks[k]()
        sums, rows = self._batch_sums(bufs, y)
        grads = self.reducer.finish()
        self.comm.allreduce_sum(sums)
        return bufs, float(sums[0] / batch_size), grads, sums, rows

    def _batch_sums(self, bufs, y):
        """[loss, correct, top-k hits] summed over this process's rows `y` of a training batch
        (whose buffers are `bufs`), and those rows' (outputs, labels); None without rows."""
        sums = np.zeros(3, np.float64)
        n = len(y)
        if not n:
            return sums, None
        out_tensor = next(iter(self.program.outputs.values()))
        outputs, labels = self._rows(self.model.to_host(bufs[out_tensor]), y)
        sums[0] = self.model.loss_value(bufs) * n
        sums[1] = M.accuracy(outputs, labels) * n
        if "top_k" in self.metrics:
            sums[2] = M.top_k_accuracy(outputs, labels, self.cfg["top_k"]) * n
        return sums, (outputs, labels)

    def _rows(self, output: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A training batch's output buffer (channels last) and labels as metrics rows: a row
        of class scores per sample, or per pixel (M.class_rows)."""
        if self.per_pixel:
            return output.reshape(-1, output.shape[-1]), labels.reshape(-1)
        return _nchw_rows(output), labels

    def evaluate(self, dataset) -> dict:
        """Loss and metrics on a dataset, in inference mode."""
        cfg = self.cfg
        outputs = self.model.predict(dataset.x, batch_size=max(cfg["batch"], 256))
        targets = make_targets(cfg["loss"], dataset.y, dataset.x, self.out_shape, np.float64,
                               self.data.norm)
        row = {"loss": M.loss_value(cfg["loss"], outputs, targets, self.probabilities)}
        if "accuracy" in self.metrics:
            row["accuracy"] = M.accuracy(outputs, dataset.y)
        if "top_k" in self.metrics:
            row[f"top_{cfg['top_k']}"] = M.top_k_accuracy(outputs, dataset.y, cfg["top_k"])
        if "mean_iou" in self.metrics:
            rows, labels = M.class_rows(outputs, dataset.y)
            row["mean_iou"] = M.mean_iou(M.confusion_matrix(labels, M.predicted_classes(rows),
                                                            self.classes))
        return row

    # -- the best weights and early stopping
    def monitor(self) -> str:
        """The metric that picks the best epoch: early stopping's monitor, else the validation
        loss when there is validation data, else the training loss."""
        es = self.cfg["early_stopping"]
        if es:
            return es["monitor"]   # checked against recorded() before training
        return "val_loss" if "val_loss" in self.recorded() else "loss"

    def _track_best(self, row: dict) -> bool:
        """Keep a copy of the weights when the monitored metric improves; True when early
        stopping's patience has run out."""
        es = self.cfg["early_stopping"]
        name = self.monitor()
        value = row.get(name)
        maximise = "acc" in name or "top_" in name or "iou" in name
        delta = es["min_delta"] if es else 0.0
        st = self.state
        better = (value is not None and math.isfinite(value) and
                  (st.best is None or (value > st.best + delta if maximise else value < st.best - delta)))
        if better:
            st.best, st.best_epoch, st.wait = value, st.epoch, 0
            self.best_weights = self._snapshot()
            return False
        st.wait += 1
        return bool(es) and st.wait >= es["patience"]

    def _snapshot(self) -> dict[str, np.ndarray]:
        return self.model.state_dict()     # copies, never views of the live buffers

    # -- the whole run
    def recorded(self) -> list[str]:
        """The history's metric columns for this run's settings and data."""
        cfg = self.cfg
        keys = ["loss"] + [m if m != "top_k" else f"top_{cfg['top_k']}" for m in self.metrics]
        if self.data.val is not None and len(self.data.val):
            keys += [f"val_{k}" for k in keys]
        return keys

    def fit(self) -> dict:
        cfg = self.cfg
        es = cfg["early_stopping"]
        if es and es["monitor"] not in self.recorded():
            from ..errors import did_you_mean
            hint = did_you_mean(es["monitor"], self.recorded())
            raise TrainingError(f"early stopping monitors '{es['monitor']}', which this run does not "
                                f"record ({hint or 'it records: ' + ', '.join(self.recorded())})")
        self._notes()
        if self.out is not None:
            from ..outdirs import prepare_run_folder
            removed = prepare_run_folder(self.out, error=TrainingError)   # its marker; no leftovers
            if removed:
                self.echo(f"removed {removed} temporary file(s) an interrupted run left in {self.out}")
        self.echo(f"training {self.network.name} on {self.data.source}: {len(self.data.train):,} "
                  f"training, {len(self.data.val) if self.data.val else 0:,} validation, "
                  f"{len(self.data.test) if self.data.test else 0:,} test samples")
        self.echo(f"  {describe(cfg)}")
        self._call("on_train_begin", {})
        stopped_by = None
        try:
            while self.state.epoch < cfg["epochs"] and not self.state.stopped_early and not stopped_by:
                start = time.perf_counter()
                lr = self._lr()
                self._call("on_epoch_begin", self.state.epoch, {})
                with _EpochBar(self.progress, self.state.epoch + 1, cfg["epochs"],
                               self._steps_per_epoch()) as bar:
                    row = self._train_epoch(bar)
                if self.comm is not None:
                    self._agree_after_epoch()
                if self.data.val is not None and len(self.data.val) and self._speaks():
                    row.update({f"val_{k}": v for k, v in self.evaluate(self.data.val).items()})
                self.state.epoch += 1
                row = {"epoch": self.state.epoch, **row, "lr": lr,
                       "seconds": round(time.perf_counter() - start, 3)}
                if self.comm is not None:   # rank 0's row (its validation) for every rank
                    row = self.comm.broadcast_object(row)
                self.state.history.append(row)
                self.state.stopped_early = self._track_best(row)
                self.echo(_epoch_line(row, cfg["epochs"]))
                if self.out is not None:
                    self.save_checkpoint()
                    self.write_history()
                else:
                    self.last_weights = self._snapshot()
                stopped_by = self._epoch_end_callbacks(row)
        except Diverged as e:
            # the model holds the weights that exploded: write the kept ones, then fail
            e.args = (e.args[0] + " " + self._finish_diverged(e),)
            e.every_rank = self.comm is not None   # judged on the global loss: every rank stops
            raise
        if self.state.stopped_early:
            self.echo(f"early stopping: {cfg['early_stopping']['monitor']} has not improved for "
                      f"{counted(cfg['early_stopping']['patience'], 'epoch')}")
        if stopped_by:
            self.echo(f"stopped by {stopped_by}")
        keep = cfg.get("keep") or keep_default(cfg)
        if keep == "best" and self.best_weights is not None and self.state.best_epoch != self.state.epoch:
            self.model.set_weights(self.best_weights, error=TrainingError)
            result = self._finish(self.state.best_epoch)
        else:
            result = self._finish(self.state.epoch)
        self._call("on_train_end", dict(result))
        return result

    def _speaks(self) -> bool:
        """Whether this process evaluates and writes for the run: rank 0 of a data-parallel
        run, or the only process."""
        return self.comm is None or self.comm.rank == 0

    def _agree_after_epoch(self) -> None:
        """At an epoch's end every rank takes rank 0's running statistics (with sync_batchnorm
        every rank computed the same ones, except a rank that had an empty shard), and the ranks
        check that they hold the same weights: they must, as each applies the same summed
        gradients; a difference would be a bug, and is better reported than trained on."""
        from .distributed import EveryRankError, broadcast_state, weights_digest
        broadcast_state(self.model, self.comm, self.running_state)
        digests = self.comm.allgather_object(weights_digest(self.model))
        if len(set(digests)) > 1:
            odd = [r for r, d in enumerate(digests) if d != digests[0]]
            raise EveryRankError(f"after epoch {self.state.epoch + 1} the weights of rank(s) "
                                 f"{', '.join(map(str, odd))} differ from rank 0's: the ranks no "
                                 "longer train one model")

    def _notes(self) -> None:
        """What the user should know before the run: batch norms whose running statistics the
        run is too short to settle, and the tensors frozen by the user (trainable=false,
        --freeze; not the state no gradient ever trains: running statistics, fixed weights)."""
        graph = self.network.graph
        note = running_statistics_note(graph, self._steps_per_epoch() * self.cfg["epochs"])
        if note:
            self.echo(note)
        state = {f"{node.name}.{p.name}" for node in graph.nodes() for p in node.params
                 if not p.trainable}
        frozen = [n for n in self.model.params if n not in self.program.grads and n not in state]
        if frozen:
            self.echo(f"frozen: {counted(len(frozen), 'tensor')} ({', '.join(frozen[:6])}"
                      f"{' ...' if len(frozen) > 6 else ''})")

    def _call(self, method: str, *args) -> None:
        for callback in self.callbacks:
            hook = getattr(callback, method, None)
            if hook is not None:
                hook(*args)

    def _epoch_end_callbacks(self, row: dict) -> str | None:
        """Each callback's on_epoch_end with Keras' logs (the epoch's metrics, epoch from 0);
        the name of the first that asks to stop (returns True or raises StopTraining)."""
        logs = {k: v for k, v in row.items() if k not in ("epoch", "seconds")}
        for callback in self.callbacks:
            hook = getattr(callback, "on_epoch_end", None)
            try:
                stop = hook is not None and hook(self.state.epoch - 1, dict(logs)) is True
            except StopTraining:
                stop = True
            if stop:
                return type(callback).__name__
        return None

    def _finish_diverged(self, e: Diverged) -> str:
        """Write the kept weights and metrics after a divergence; what to tell the user."""
        st = self.state
        if st.epoch == 0:
            return "No epoch finished, so this run wrote no weights and no checkpoint."
        weights, epoch = self.best_weights, st.best_epoch
        if (self.cfg.get("keep") or keep_default(self.cfg)) == "last" or weights is None:
            if self.out is None:
                weights = self.last_weights
            else:
                arrays, _ = read_checkpoint(self.out / CHECKPOINT)   # the last good epoch's
                weights = {k[6:]: v for k, v in arrays.items() if k.startswith("param/")}
            epoch = st.epoch
        self.model.set_weights(weights, error=TrainingError)
        e_epoch, e_batch, e_step = e.where
        self._finish(epoch, diverged={"epoch": e_epoch, "batch": e_batch, "step": e_step,
                                      "loss": e.loss, "lr": e.lr})
        if self.out is None:
            return f"The model holds epoch {epoch}'s weights."
        return (f"{self.out / WEIGHTS} holds epoch {epoch}'s weights; {self.out / CHECKPOINT} is "
                f"epoch {st.epoch}'s, the last good one: continue it with --resume and a lower --lr.")

    def _finish(self, epoch: int, diverged: dict | None = None) -> dict:
        """Write the model's weights (those of `epoch`) and the test metrics they score."""
        st = self.state
        if self.out is not None:
            self.save_weights(self.out / WEIGHTS)
        name = self.monitor()
        why = []
        if epoch == st.best_epoch:
            why.append(f"best {name}" + ("" if st.best is None else f" {st.best:.4f}"))
        if epoch == st.epoch:
            why.append("last good epoch" if diverged else "last epoch")
        if self.out is not None:
            self.echo(f"{WEIGHTS}: epoch {epoch}'s weights ({', '.join(why)})")
        else:
            self.echo(f"the model keeps epoch {epoch}'s weights ({', '.join(why)})")
        result = {"epochs_run": st.epoch, "steps": st.step, "stopped_early": st.stopped_early,
                  "best_epoch": st.best_epoch, "monitor": name, "weights_epoch": epoch,
                  "keep": self.cfg.get("keep") or keep_default(self.cfg),
                  "seconds": round(sum(r["seconds"] for r in st.history), 3)}
        if diverged:
            result["diverged"] = diverged
        if self.data.test is not None and len(self.data.test) and self._speaks():
            test = self.evaluate(self.data.test)
            result.update({f"test_{k}": v for k, v in test.items()})
            self.echo("test: " + "  ".join(f"{k} {v:.4f}" for k, v in test.items())
                      + f"  ({len(self.data.test):,} samples)")
        if self.out is not None:
            write_atomic(self.out / "metrics.json", json.dumps(result, indent=2) + "\n")
        return result

    # -- outputs
    def write_history(self) -> None:
        hist = self.state.history
        write_atomic(self.out / "history.json", json.dumps(hist, indent=2) + "\n")
        keys = list(dict.fromkeys(k for row in hist for k in row))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        w.writerows(hist)
        write_atomic(self.out / "history.csv", buf.getvalue())
        from .plots import plot_history
        plot_history(hist, self.out / "learning_curves", f"{self.network.name}: learning curves")

    def _meta(self) -> dict:
        from ..fingerprint import metadata
        return {"network": self.network.name, **metadata(self.network.graph, str(self.model.dtype)),
                "spec": self.spec_text,
                "context": json.dumps(self.context), "norm": json.dumps(self.data.norm),
                "class_names": json.dumps(self.data.class_names), "loss": self.cfg["loss"],
                "data": json.dumps(self.cfg["data"])}

    def save_weights(self, path: Path) -> None:
        from ..runtime.checkpoint import save_arrays
        save_arrays(path, self.model.state_dict(), {"format": WEIGHTS_FORMAT, **self._meta()})

    def save_checkpoint(self) -> None:
        from ..runtime.checkpoint import save_arrays
        arrays = {f"param/{k}": v for k, v in self.model.state_dict().items()}
        arrays.update({f"optim/{k}": v for k, v in self.optimizer.state_arrays().items()})
        st = self.state
        if self.best_weights is not None and st.best_epoch != st.epoch:   # else they are param/
            arrays.update({f"best/{k}": v for k, v in self.best_weights.items()})
        state = {"epoch": st.epoch, "step": st.step, "optimizer_t": self.optimizer.t,
                 "best": st.best, "best_epoch": st.best_epoch, "wait": st.wait,
                 "stopped_early": st.stopped_early, "history": st.history,
                 "loss_scale": st.loss_scale,
                 "rng": self.rng.bit_generator.state,
                 "dropout_rng": self.model.executor.ctx.rng.bit_generator.state}
        save_arrays(self.out / CHECKPOINT, arrays,
                    {"format": CHECKPOINT_FORMAT, **self._meta(), "config": json.dumps(self.cfg),
                     "state": json.dumps(state)})

    def restore(self, arrays: dict, meta: dict) -> None:
        """Continue from a checkpoint written by save_checkpoint (exactly: same random streams).
        Everything is checked before anything changes: the metadata (training.metadata), the
        weights, optimizer slots and best weights against this run's model and optimizer."""
        meta = read_metadata(meta, getattr(meta, "source", "checkpoint"), checkpoint=True)
        source, state = meta.source, meta.state
        columns = {"epoch", "lr", "seconds", *self.recorded()}
        extra = sorted(set(state["history"][0]) - columns) if state["history"] else []
        if extra:
            raise TrainingError(f"{source}: its history records {', '.join(extra)}, which this run "
                                f"does not ({', '.join(sorted(columns))}); the checkpoint was "
                                "written for other data or settings")
        params = {k[6:]: v for k, v in arrays.items() if k.startswith("param/")}
        self.model.check_weights(params, strict=True, source=source, error=TrainingError)
        slots = {k[6:]: v for k, v in arrays.items() if k.startswith("optim/")}
        for name, value in slots.items():     # load_state checks names, shapes and dtypes
            if np.asarray(value).dtype.kind in "fc" and not np.isfinite(value).all():
                raise TrainingError(f"{source}: optimizer slot {name} holds NaN or infinite values")
        best = {k[5:]: v for k, v in arrays.items() if k.startswith("best/")}
        if best:
            self.model.check_weights(best, strict=True, source=f"{source} (best weights)",
                                     error=TrainingError)
        try:     # all slots are checked before any is copied
            self.optimizer.load_state(slots, state["optimizer_t"])
        except ValueError as e:
            raise TrainingError(f"{source}: the optimizer state does not fit: {e}") from None
        self.model.set_weights(params, strict=True, source=source, error=TrainingError)
        self.best_weights = best or None
        self.state = RunState(epoch=state["epoch"], step=state["step"], history=state["history"],
                              best=state["best"], best_epoch=state["best_epoch"], wait=state["wait"],
                              stopped_early=state["stopped_early"],
                              loss_scale=state.get("loss_scale"))   # None: fixed again at resume
        self._restore_best()
        self.rng.bit_generator.state = state["rng"]
        self.model.executor.ctx.rng.bit_generator.state = state["dropout_rng"]
        self._seed_dropout()   # ranks other than 0: their own stream (a checkpoint keeps rank 0's)

    def _restore_best(self) -> None:
        """The best weights after a restore: a checkpoint holds best/ only when the best epoch
        is not its last (else they are its param/); one from before the best weights were
        always kept may hold no best at all, and then its last epoch stands as the best."""
        st = self.state
        if self.best_weights is None and st.epoch and st.best_epoch in (None, st.epoch):
            self.best_weights = self._snapshot()
            if st.best_epoch is None:
                last = st.history[-1] if st.history else {}
                st.best, st.best_epoch = last.get(self.monitor()), st.epoch


def read_checkpoint(path) -> tuple[dict, dict]:
    """(arrays, metadata) of a checkpoint, or an error saying what is wrong with it: a
    TrainingError for a file that cannot be read, a MetadataError (training.metadata) naming
    the key for metadata that is not what save_checkpoint writes."""
    from ..runtime.checkpoint import WeightsError, load_arrays
    try:
        arrays, meta = load_arrays(path)
    except WeightsError as e:
        raise TrainingError(str(e)) from None
    return arrays, read_metadata(meta, path, checkpoint=True)


def _nchw_rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), -1) if a.ndim != 4 else a.transpose(0, 3, 1, 2).reshape(len(a), -1)


def _epoch_line(row: dict, epochs: int) -> str:
    width = len(str(epochs))
    parts = [f"epoch {row['epoch']:>{width}}/{epochs}"]
    for k, v in row.items():
        if k in ("epoch", "seconds"):
            continue
        parts.append(f"{k} {v:.3g}" if k == "lr" else f"{k} {v:.4f}")
    seconds = row["seconds"]   # small nets train an epoch in hundredths of a second
    parts.append(f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s")
    return "  ".join(parts)


class _EpochBar:
    """A rich progress bar for one epoch with live loss and accuracy; nothing when not interactive."""

    def __init__(self, enabled: bool, epoch: int, epochs: int, steps: int):
        self.enabled, self.epoch, self.epochs, self.steps = enabled, epoch, epochs, steps
        self.progress = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        self.progress = Progress(TextColumn(f"epoch {self.epoch}/{self.epochs}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[metrics]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), transient=True)
        self.progress.start()
        task = self.progress.add_task("train", total=self.steps, metrics="")

        def update(done, loss, acc):
            self.progress.update(task, completed=done, metrics=f"loss {loss:.4f} acc {acc:.4f}")
        return update

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False
