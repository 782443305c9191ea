"""The `netspec` command. Bad specs exit 1 with a positioned error; bad usage exits 2."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import sys
from pathlib import Path

import click

from .errors import OverrideError, SpecError
from .runtime.target import TargetUnavailable
from .interop import DEFAULT_OPSET, MIN_OPSET
from .passes import DEFAULT as DEFAULT_PASSES
from .report.render import DEFAULT_PNG_DPI, MAX_PNG_DPI

EXIT_SPEC = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3

# ------------------------------------------------------------------ shared options

# The largest integer any flag takes (batch, epochs, depth, seed), as the largest number a spec
# may write: far past any real use, and it keeps every count the flags feed within 64-bit
# integers and every product of them within floats.
MAX_COUNT = 10**18
MAX_RANKS = 1024   # ranks `train --ranks` starts on one machine


def _count(minimum: int = 1) -> click.IntRange:
    return click.IntRange(minimum, MAX_COUNT)


class FiniteFloat(click.FloatRange):
    """A float flag that refuses nan and infinity (click's FloatRange lets nan past any bound)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


def _spec_options(f):
    f = click.option("--set", "sets", multiple=True, metavar="NAME=VALUE",
                     help="Override a network parameter, e.g. --set classes=1000.")(f)
    f = click.option("--input", "input_shape", metavar="[NAME=]SHAPE",
                     help="Override the input shape, e.g. --input 3@299x299.")(f)
    f = click.option("--network", metavar="NAME", help="Network to use when the file has several.")(f)
    return f


def _target_option(what: str, runs: bool = True):
    """--target NAME: the registered targets (runtime/targets.py), cpu by default. For a
    command that runs the network (runs=True) the target must be usable here, checked before
    any work (TargetUnavailable: exit 1, saying what is missing)."""
    from .runtime.targets import PACKAGES

    def usable(ctx, param, name):
        from .runtime.targets import get_target
        chosen = get_target(name)
        if runs:
            chosen.require_device()
        return name

    return click.option("--target", type=click.Choice(sorted(PACKAGES)), default="cpu",
                        show_default=True, help=what, callback=usable)


def _parse_sets(sets) -> dict:
    from .lang.elaborate import parse_value
    out = {}
    for item in sets:
        if "=" not in item:
            raise click.BadParameter(f"'{item}' is not NAME=VALUE", param_hint="--set")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key.isidentifier():
            raise click.BadParameter(f"'{key}' is not a parameter name", param_hint="--set")
        try:
            out[key] = parse_value(value)
        except SpecError as e:
            raise click.BadParameter(e.message, param_hint="--set") from None
    return out


def _parse_input(text: str | None) -> dict:
    if not text:
        return {}
    from .lang.parser import parse_shape_text
    name = None
    if "=" in text:
        name, text = text.split("=", 1)
    try:
        return {name: parse_shape_text(text)}
    except ValueError as e:
        raise click.BadParameter(f"cannot read shape '{text}': {e} (write C@HxW, e.g. 3@224x224, "
                                 "TxF, e.g. 197x768, or a length such as 784)", param_hint="--input") from None


def build_graph(spec_path: str, sets=(), input_shape=None, network=None):
    """The spec and its checked graph (pipeline.load), with the flags every command takes."""
    from . import pipeline
    overrides = _parse_sets(sets)
    inputs = _parse_input(input_shape)
    try:
        return pipeline.load(spec_path, network, overrides, inputs)
    except OverrideError as e:  # --set / --input / --network do not fit the spec: usage (exit 2)
        raise click.UsageError(f"{e.message}" + (f" ({e.hint})" if e.hint else "")) from None


# ------------------------------------------------------------------ commands

class _PipeClosed(Exception):
    """An EPIPE raised by a command, carried past click: click >= 8.5 turns an OSError EPIPE
    into sys.exit(1) even outside standalone mode, losing the error main() must tell apart."""

    def __init__(self, error: OSError):
        super().__init__(error)
        self.error = error


class _Commands(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OSError as e:
            if e.errno == errno.EPIPE:
                raise _PipeClosed(e) from e
            raise


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="netspec")
def cli():
    """netspec: declarative network specs, checked, summarised and compiled."""


@cli.command()
@click.argument("spec", type=click.Path())
@_spec_options
def check(spec, sets, input_shape, network):
    """Parse SPEC, infer every shape and report the first error (exit 1) or OK."""
    _, graph = build_graph(spec, sets, input_shape, network)
    t, n = graph.total_params()
    click.echo(f"{spec}: ok: network {graph.name}, {len(graph)} layers, {t + n:,} parameters")


@cli.command()
@click.argument("spec", type=click.Path())
@_spec_options
@click.option("--batch", default=1, show_default=True, type=_count(),
              help="Batch size for MACs and memory.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--depth", type=_count(0), default=None,
              help="Open N levels of blocks; fold deeper ones into one row each (0: one row per top-level block).")
@click.option("--memory", metavar="SIZE", help="Memory budget (e.g. 16GB): report the largest batch that fits.")
@click.option("--optimizer", metavar="NAME", help="Optimizer for the training memory estimate "
              "(default: the spec's train section, else adam).")
def summary(spec, sets, input_shape, network, batch, fmt, depth, memory, optimizer):
    """Print SPEC's layers with shapes, parameters, MACs, memory and receptive fields."""
    from .lang.train_section import OPTIMIZERS
    from .report.summary import parse_memory, planned_memory_json, planned_memory_text, summarize
    budget = None
    if memory:
        try:
            budget = parse_memory(memory)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--memory") from None
    if optimizer and optimizer not in OPTIMIZERS:
        raise click.BadParameter(f"unknown optimizer '{optimizer}' (choose from {', '.join(OPTIMIZERS)})",
                                 param_hint="--optimizer")
    from . import pipeline
    from .runtime.memory import PlanTooLarge
    _, graph = build_graph(spec, sets, input_shape, network)
    s = summarize(graph, batch, optimizer)
    try:
        plans = pipeline.plan(_program_for_plans(graph), batch, phases=pipeline.REPORTED_PHASES)
        not_planned = None
    except PlanTooLarge as e:  # the summary's own totals are exact integers: still print them
        plans, not_planned = {}, str(e)
    if fmt == "json":
        out = s.to_json(depth, budget)
        out["planned_memory"] = planned_memory_json(plans)
        if not_planned:
            out["planned_memory_note"] = f"not planned: {not_planned}"
        click.echo(json.dumps(out, indent=2))
    else:
        planned = (f"Planned memory: not planned: {not_planned}" if not_planned
                   else planned_memory_text(plans, batch))
        click.echo(s.table(depth, budget) + "\n\n" + planned)


def _program_for_plans(graph):
    """The lowered program whose memory the summary plans: with its training step, unless
    the spec has none netspec can build (no loss fits its output), then inference only."""
    from . import pipeline
    try:
        return pipeline.program(graph, training=True)
    except SpecError:
        return pipeline.program(graph, training=False)


@cli.command(name="compile")
@click.argument("spec", type=click.Path())
@_spec_options
@click.option("-o", "--out", "out_dir", metavar="DIR", help="Build folder (default: build/NETWORK).")
@click.option("--batch", default=1, show_default=True, type=_count())
@click.option("--passes", "pass_list", metavar="LIST", help="Graph passes: 'a,b' exactly those, "
              "'-c' the default ones but c, 'none' none (default: " + ", ".join(DEFAULT_PASSES) + ").")
@click.option("--report", is_flag=True, help="Print what each pass did.")
@click.option("--dump", type=click.Choice(["graph"]), help="Print the inference graph after each pass.")
@click.option("--verify", is_flag=True, help="Before writing, run each pass alone: print what it "
              "changed and check on random inputs (float64, CPU) that the outputs, and for a "
              "training-safe pass the gradients, stay the same; exit 1 naming a pass that changes them.")
@_target_option("The target whose memory plan the build folder holds (its alignment and "
                "in-place rules); compiling needs no GPU.", runs=False)
def compile_cmd(spec, sets, input_shape, network, out_dir, batch, pass_list, report, dump, verify,
                target):
    """Check SPEC and write its build folder: graph, summary, the lowered program
    (program.txt: inference and training phases, after the graph passes; passes.txt: what
    each pass did), diagrams and the spec itself."""
    from . import pipeline
    from .passes.manager import PassError, graph_text, select
    from .report.summary import planned_memory_text, summarize
    try:
        passes = select(pass_list)
    except PassError as e:
        raise click.BadParameter(str(e), param_hint="--passes") from None
    shown = f"-o {out_dir or repr(out_dir)}" if out_dir is not None else None
    if out_dir is not None:     # refuse a target that is not netspec's before any work
        _check_build_target(Path(out_dir), [spec], shown)
    spec_obj, graph = build_graph(spec, sets, input_shape, network)
    folder = Path(out_dir or Path("build") / graph.name)
    sources = [spec, *spec_obj.files]
    _check_build_target(folder, sources, shown)
    if verify:
        _verify_passes(graph, passes)
    s = summarize(graph, batch)
    dump_graph = (lambda name, g: click.echo(f"## after {name}\n{graph_text(g)}\n")) if dump else None
    program = pipeline.lower(pipeline.optimise(graph, passes, training=True, dump=dump_graph))
    pass_report = _pass_report(program)
    plans = pipeline.plan(program, batch, target, phases=pipeline.REPORTED_PHASES)
    files = {
        "graph.json": json.dumps(graph.to_json(), indent=2) + "\n",
        "summary.txt": s.table() + "\n\n" + planned_memory_text(plans, batch) + "\n",
        "summary.json": json.dumps(s.to_json(), indent=2) + "\n",
        "spec.net": spec_obj.text,
        "program.txt": program.text(),
        "passes.txt": pass_report + "\n",
        "memory_plan.txt": "\n\n".join(p.text() for p in plans.values()) + "\n",
        "memory_plan.json": json.dumps({k: p.to_json() for k, p in plans.items()}, indent=2) + "\n",
    }
    files.update(_diagrams(graph))
    files.update(_generated_kernels(program))
    from .outdirs import OutputFolderError, write_build_folder
    try:
        write_build_folder(folder, files, sources, shown)
    except OutputFolderError as e:
        _refuse_output(e)
    if report:
        click.echo(pass_report)
    click.echo(f"compiled {graph.name}: {len(graph)} layers -> {folder}/ ({', '.join(files)})")


def _verify_passes(graph, passes) -> None:
    """compile --verify: each pass's graph diff and result check, printed as it is done, a
    spinner saying what is being compiled meanwhile (on a terminal); exit 1 at a pass that
    changes the results, before anything is written."""
    from rich.console import Console
    from .verify import failure_message, verify_passes
    console = Console(highlight=False, stderr=True)
    click.echo(f"verifying {len(passes)} passes on {graph.name} (float64 on the CPU, batch 2, "
               "random inputs and parameters)")
    with console.status("compiling") as spinner:
        for check in verify_passes(graph, passes, status=spinner.update):
            click.echo(check.text())
            if not check.passed:
                raise click.ClickException(failure_message(check))
    click.echo(f"verified: no pass changed {graph.name}'s results")


def _check_build_target(target: Path, sources, shown) -> None:
    from .outdirs import OutputFolderError, check_build_target
    try:
        check_build_target(target, sources, shown)
    except OutputFolderError as e:
        _refuse_output(e)


def _refuse_output(e) -> None:
    """An output folder netspec must not write into: exit 2 for an impossible path, else 1."""
    raise (click.UsageError if e.usage else click.ClickException)(str(e)) from None


def _generated_kernels(program) -> dict[str, str]:
    """kernels/*.py: the CPU target's generated source for each fused pattern (the runtime
    compiles the same text from its cache folder, whose files keep their dates)."""
    from .runtime.cpu.fused import kernel_sources
    return {f"kernels/{name}": text for name, text in kernel_sources(program).items()}


def _pass_report(program) -> str:
    """What each graph pass did, for the inference and the training program."""
    parts = []
    for phase, records in program.pass_records.items():
        parts.append(f"# {phase} graph")
        parts.extend(r.text() for r in records)
    return "\n".join(parts)


def _diagrams(graph) -> dict:
    """diagram.svg (every layer) and, for nets with blocks, diagram_blocks.svg (blocks folded).

    A diagram Graphviz cannot draw (no `dot`, too many boxes, dot failing) is written as its .dot
    source instead, with a note: the rest of the build folder does not depend on the picture, so
    the compile goes on, and the source can still be drawn with --depth or another tool.
    """
    from .report.render import svg_or_source
    views = {"diagram": None, "diagram_blocks": 0} if graph.blocks else {"diagram": None}
    out = {}
    for name, depth in views.items():
        fmt, text, why = svg_or_source(graph, depth)
        if why is not None:
            click.echo(f"note: {name}.svg not drawn: {why.message}; wrote {name}.dot instead"
                       + (f" (hint: {why.hint})" if why.hint else ""), err=True)
        out[f"{name}.{fmt}"] = text
    return out


@cli.command()
@click.argument("spec", type=click.Path())
@_spec_options
@click.option("-o", "--out", "out_file", required=True, metavar="FILE",
              help="Output file: .svg, .png, .pdf or .dot.")
@click.option("--depth", type=_count(0), default=None,
              help="Draw blocks nested deeper than N as one box each.")
@click.option("--rankdir", type=click.Choice(["TB", "LR"], case_sensitive=False), default="TB",
              show_default=True, help="Top to bottom or left to right.")
@click.option("--edge-shapes/--no-edge-shapes", default=False, help="Label edges with tensor shapes.")
@click.option("--fold/--no-fold", default=True, show_default=True,
              help="With --depth, draw a run of identical blocks once (residual(64) x3).")
@click.option("--dpi", type=_count(36), default=DEFAULT_PNG_DPI, show_default=True,
              help=f"A .png's resolution in dots per inch, at most {MAX_PNG_DPI} (Graphviz's own is 96).")
def render(spec, sets, input_shape, network, out_file, depth, rankdir, edge_shapes, fold, dpi):
    """Draw SPEC's architecture with Graphviz."""
    from .report.render import FORMATS, render as draw
    if dpi > MAX_PNG_DPI:     # (every integer flag has the same bound; this one a tighter one too)
        raise click.BadParameter(f"{dpi} is over {MAX_PNG_DPI}: a PNG's pixels grow with its square",
                                 param_hint="--dpi")
    suffix = Path(out_file).suffix.lstrip(".").lower()
    if suffix not in FORMATS:
        raise click.BadParameter(f"'{out_file}' must end in " + ", ".join("." + f for f in FORMATS),
                                 param_hint="-o")
    _, graph = build_graph(spec, sets, input_shape, network)
    path = draw(graph, out_file, depth, rankdir.upper(), edge_shapes, fold, dpi)
    click.echo(f"rendered {graph.name} -> {path}")


@cli.command()
@click.argument("spec", type=click.Path())
@_spec_options
@click.option("--node", metavar="LABEL", help="Check one layer (its name or label), its inputs free.")
@click.option("--block", metavar="NAME", help="Check a block instance (residual3), or the first "
              "instance of each distinct argument list of a block (residual).")
@click.option("--batch", default=2, show_default=True, type=_count(),
              help="Batch size (batch norms use the batch's statistics: 2 or more for a vector).")
@click.option("--seed", default=0, show_default=True, type=_count(0),
              help="Seed for the parameters, inputs, targets and directions.")
def gradcheck(spec, sets, input_shape, network, node, block, batch, seed):
    """Compare every gradient of SPEC (or of one --node or --block, its inputs free) with
    central differences, in float64, and print a table; exit 1 when any differs.

    The loss is the mean squared error of the output against random targets; parameters are
    drawn from their initialisers. The step runs in training mode, as training does: batch
    norms use the batch's statistics, and dropout and drop_path draw one fixed mask, so the
    gradient checked is the one of the network with that mask. Small tensors are checked
    element by element, larger ones along 3 random directions."""
    from rich.console import Console
    from rich.table import Table
    from .gradcheck import TOLERANCE, UnknownPart, check_part, parts_to_check
    if node and block:
        raise click.UsageError("--node checks a layer, --block a block: give one")
    _, graph = build_graph(spec, sets, input_shape, network)
    try:
        parts = parts_to_check(graph, node, block)
    except UnknownPart as e:
        raise click.UsageError(str(e)) from None
    # wide enough for a nested layer's tensor name when the output is no terminal's
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    console.print(f"{graph.name}: gradients against central differences, float64, batch {batch}",
                  soft_wrap=True)
    checked, failed = 0, []
    for part in parts:
        table = Table(title=part.name)
        for column in ("tensor", "shape", "compared", "max relative error", "result"):
            table.add_column(column, justify="right" if column == "max relative error" else "left",
                             no_wrap=column == "tensor")
        for c in check_part(part, batch, seed):
            table.add_row(c.tensor, "x".join(map(str, c.shape)), c.compared, f"{c.error:.2e}",
                          "pass" if c.passed else "FAIL")
            checked += 1
            failed += [c] * (not c.passed)
        console.print(table)
    if failed:
        raise click.ClickException(
            f"{len(failed)} of {checked} gradients differ from central differences by more than "
            f"{TOLERANCE:g}: " + ", ".join(f"{c.tensor} ({c.error:.2e})" for c in failed))
    click.echo(f"all {checked} gradients match central differences "
               f"(relative error under {TOLERANCE:g})")


@cli.command(name="fmt")
@click.argument("paths", nargs=-1, required=True, type=click.Path(), metavar="FILE_OR_DIR...")
@click.option("--check", is_flag=True, help="Write nothing; list the files that would change "
              "and exit 1 if any would.")
@click.option("--diff", is_flag=True, help="Write nothing; print what would change as a unified diff.")
def fmt_cmd(paths, check, diff):
    """Rewrite each spec (every *.net below a folder) in the canonical layout, keeping its
    comments (docs/LANGUAGE.md#layout-netspec-fmt). A spec that does not parse is left as
    it is and reported (exit 1)."""
    import difflib
    from .lang.formatter import format_text, spec_files
    from .errors import remember_source
    from .lang.parser import read_spec
    from .outdirs import write_atomic
    files = spec_files(paths)
    changed, failed = [], 0
    for path in files:
        try:
            text = read_spec(path, str(path))
            remember_source(str(path), text)    # for the error's excerpt
            formatted = format_text(text, str(path))
        except SpecError as e:
            click.echo(e.format(), err=True)
            failed += 1
            continue
        if formatted == text:
            continue
        changed.append(path)
        if diff:
            click.echo("".join(difflib.unified_diff(text.splitlines(True), formatted.splitlines(True),
                                                    f"{path}", f"{path} (formatted)")), nl=False)
        elif check:
            click.echo(str(path))
        else:
            write_atomic(os.path.realpath(path), formatted)    # a link's file, the link kept
            click.echo(f"formatted {path}")
    if failed:
        raise click.ClickException(f"{failed} of {len(files)} spec{'s' * (len(files) != 1)} "
                                   "could not be read or parsed (left as they are)")
    if check and changed:
        raise click.ClickException(f"{len(changed)} of {len(files)} spec{'s' * (len(files) != 1)} "
                                   "not formatted (run `netspec fmt` on them)")
    if not files:
        raise click.ClickException("no .net files in " + ", ".join(paths))


# ------------------------------------------------------------------ import

@cli.command(name="import")
@click.argument("model", type=click.Path(), metavar="MODEL.onnx")
@click.option("-o", "--out", "out_file", required=True, metavar="FILE.net",
              help="The spec to write.")
@click.option("--weights", "weights_file", metavar="FILE",
              help="Also write the model's weights as a netspec weights file (.safetensors or .npz).")
@click.option("--network", metavar="NAME", help="The network's name (default: the model file's name).")
def import_cmd(model, out_file, weights_file, network):
    """Translate an ONNX model into a readable spec: netspec's ops, repeated units as blocks
    (`residual(64) * 3`), attributes at their defaults left out (docs/INTEROP.md#import).
    Nodes netspec cannot express are listed, all of them, and nothing is written (exit 1)."""
    from .interop.onnx_import import OnnxImportError, import_onnx, save_weights
    from .outdirs import write_atomic
    from .paths import not_a_file
    from .runtime.checkpoint import WeightsError, weights_format
    if network is not None and not network.isidentifier():
        raise click.BadParameter(f"'{network}' is not a name (letters, digits and _)", param_hint="--network")
    why = not_a_file(model)
    if why:
        raise click.ClickException(f"{model}: {why}")
    outputs = [("-o", out_file)] + ([("--weights", weights_file)] if weights_file else [])
    for flag, path in outputs:
        if not path or Path(path).is_dir() or path.endswith(os.sep):
            raise click.BadParameter(f"'{path}' is a folder, not a file to write", param_hint=flag)
        if os.path.exists(path) and os.path.samefile(path, model):
            raise click.BadParameter(f"'{path}' is the model itself", param_hint=flag)
    if weights_file:
        try:
            weights_format(weights_file)
        except WeightsError as e:
            raise click.BadParameter(str(e), param_hint="--weights") from None
        if os.path.abspath(weights_file) == os.path.abspath(out_file):
            raise click.BadParameter("the spec and the weights would be one file", param_hint="--weights")
    try:
        imported = import_onnx(model, network)
    except OnnxImportError as e:
        _fail(e)
    if weights_file:
        save_weights(imported, weights_file)
    write_atomic(out_file, imported.text)
    params = sum(v.size for v in imported.weights.values())
    click.echo(f"{out_file}: network {imported.network}, {len(imported.graph)} layers, "
               f"{params:,} parameters")
    if weights_file:
        click.echo(f"{weights_file}: {len(imported.weights)} tensors")


# ------------------------------------------------------------------ training

def _training_errors():
    from .errors import TrainingError
    from .runtime.checkpoint import WeightsError
    from .training.config import ConfigError
    from .training.data import DataError
    return (TrainingError, DataError, ConfigError, WeightsError)


def _fail(e: Exception):
    """A problem with the user's data, checkpoint or settings: exit 1 with the message."""
    raise click.ClickException(str(e)) from None


def _default_run_dir(graph) -> Path:
    return Path("runs") / graph.name


@cli.command()
@click.argument("spec", type=click.Path())
@_spec_options
@click.option("--data", metavar="NAME|PATH", help="Training data: 'digits' (embedded, the default), "
              "a folder of IDX files (MNIST layout), a .npz file, a folder of .npy arrays, or a "
              "folder of images per class.")
@click.option("--epochs", type=_count(), help="Epochs in all (with --resume: the final epoch).")
@click.option("--batch", type=_count(), help="Mini-batch size.")
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), help="Base learning rate.")
@click.option("--optimizer", metavar="NAME", help="sgd, momentum, nesterov, adagrad, rmsprop, adam or nadam.")
@click.option("--seed", type=_count(0), help="Seed for initial weights, shuffling, "
              "augmentation and dropout (default: the train section's, else 0).")
@click.option("--validation-split", type=FiniteFloat(0, 0.9), help="Share of the training "
              "data held out for validation.")
@click.option("--validation-data", metavar="PATH", help="Validate on this data (any --data form) "
              "instead of a split of the training data.")
@click.option("--augment", metavar="LIST", help="Augmentations for training batches, as the train "
              "section writes them: 'flip, shift(amount=0.2)'; 'none' for none.")
@click.option("--keep", type=click.Choice(["best", "last"]), help="The weights weights.safetensors "
              "gets: the best epoch's by the monitored metric (the default) or the last epoch's.")
@click.option("-o", "--out", "out_dir", metavar="DIR", help="Run folder (default: runs/NETWORK).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint, exactly "
              "(only --epochs, --lr and --keep may change it).")
@click.option("--init-from", type=click.Path(), metavar="FILE",
              help="Start from the weights in FILE that match by name and shape (transfer learning).")
@click.option("--freeze", metavar="LABELS", help="Comma-separated layers or blocks whose weights stay fixed.")
@_target_option("Where to train: cpu, or cuda (an NVIDIA GPU: parameters, activations, "
                "gradients and optimizer state stay on it).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars (default: when the output is a terminal).")
@click.option("--ranks", type=_count(), metavar="N",
              help="Data-parallel training on N processes of this machine, started through MPI "
              "(pip install 'netspec[mpi]'); each takes a share of every batch. On a cluster, "
              "start `mpirun -n N netspec train SPEC` instead (docs/DISTRIBUTED.md).")
def train(spec, sets, input_shape, network, data, epochs, batch, lr, optimizer, seed, validation_split,
          validation_data, augment, keep, out_dir, resume, init_from, freeze, target, progress, ranks):
    """Train SPEC: the train section's settings, overridden by flags. Writes checkpoints,
    history, learning curves and test metrics into the run folder."""
    from .network import Network
    from .lower.build import default_loss
    from .training import config as C
    from .training.run import apply_freeze
    from .training.run import train as run_training
    if resume and init_from:
        raise click.UsageError("--resume continues a run; --init-from starts a new one: give one")
    spec_obj, graph = build_graph(spec, sets, input_shape, network)
    run_dir = Path(out_dir) if out_dir else _default_run_dir(graph)
    from .outdirs import OutputFolderError, check_run_folder
    try:
        check_run_folder(run_dir)    # before any long work; run_training checks it again
    except OutputFolderError as e:
        _refuse_output(e)
    if augment is not None:
        from .lang.elaborate import parse_setting
        try:
            augment = {} if augment.strip() == "none" else parse_setting("augment", augment)
        except SpecError as e:
            raise click.BadParameter(e.message + (f" ({e.hint})" if e.hint else ""),
                                     param_hint="--augment") from None
    labels = [f.strip() for f in (freeze or "").split(",") if f.strip()]
    context = {"sets": list(sets), "input": input_shape, "network": network, "freeze": labels}
    flags = {"epochs": epochs, "batch": batch, "lr": lr, "optimizer": optimizer, "seed": seed,
             "data": data, "validation_split": validation_split, "validation_data": validation_data,
             "augment": augment, "keep": keep}
    from .training import distributed
    if ranks is not None and ranks > MAX_RANKS:   # (every integer flag's bound, and this tighter one)
        raise click.BadParameter(f"{ranks} is over {MAX_RANKS}, the processes one machine starts",
                                 param_hint="--ranks")
    if ranks and ranks > 1 and distributed.launched_size() > 1:
        raise click.UsageError("--ranks starts the ranks itself: under mpirun (or mpiexec, srun) "
                               "leave it out, the launcher's -n gives the number of ranks")
    comm = None
    try:
        apply_freeze(graph, labels)
        cfg = C.resolve(graph.train, loss=default_loss(graph), **flags)
        if ranks and ranks > 1:     # settings checked here, once; the ranks run the rest
            from .training.launch import launch
            code = launch(_invocation_words, ranks, run_dir, click.echo,
                          lambda line: click.echo(line, err=True))
            if code:
                raise click.exceptions.Exit(code)
            return
        comm = distributed.world()
        run_training(Network(spec_obj, graph), spec_obj.text, context, cfg, run_dir, target=target,
                     resume=resume, init_path=init_from,
                     progress=sys.stdout.isatty() if progress is None else progress,
                     flags={k: v for k, v in flags.items() if v is not None}, comm=comm)
    except C.FlagError as e:
        distributed.record_exit(comm, 2)
        raise click.UsageError(str(e)) from None
    except _training_errors() as e:
        distributed.record_exit(comm, 1)
        if comm is not None and comm.rank > 0:
            if getattr(e, "every_rank", False) or isinstance(e, distributed.EveryRankError):
                # rank 0 meets it too and reports it; exiting 0 here keeps mpiexec from
                # stopping rank 0 before it has (its status, 1, is the run's)
                raise click.exceptions.Exit(0)
            raise click.ClickException(f"rank {comm.rank}: {e}") from None
        _fail(e)
    except BaseException:
        distributed.record_exit(comm, 1)
        raise
    distributed.record_exit(comm, 0)
    if comm is not None and comm.rank > 0:
        return
    from .outdirs import RUN_OUTPUTS
    written = [name for name in RUN_OUTPUTS if (Path(run_dir) / name).is_file()]
    click.echo(f"wrote {run_dir}/ ({', '.join(written)})")


def _checked_weights(spec, sets, input_shape, network, weights, force=False):
    """(spec, graph, arrays, metadata, path): the network of SPEC and the tensors of a weights
    file (default: its `netspec train` run's), checked to be its parameters before anything
    is compiled.

    The file's stored --set/--input (its metadata's context) build the network unless flags
    are given; either way the network's parameters must match the file's tensors, so metadata
    cannot make netspec build what the file does not hold. A file saved from another network
    (its graph hash) is refused saying what differs, unless `force` (the caller then takes
    the tensors that match by name and shape)."""
    from .paths import not_a_file
    from .training.metadata import check_fits, refuse_other_network, stored_flags
    from .training.run import default_weights, load_trained
    spec_obj, graph = build_graph(spec, sets, input_shape, network)
    path = Path(weights) if weights else default_weights(_default_run_dir(graph))
    try:
        problem = not_a_file(path)
        if problem == "no such file" and not weights:
            raise click.ClickException(f"no weights at {path}: train first (netspec train {spec}) "
                                       "or give --weights")
        if problem:
            raise click.ClickException(f"--weights {path}: {problem}")
        arrays, meta = load_trained(path)
        stored_sets, stored_input = stored_flags(meta)
        from_context = not sets and not input_shape and bool(stored_sets or stored_input)
        if from_context:
            spec_obj, graph = _graph_from_context(spec, stored_sets, stored_input, network, path)
        # a network built from the file's own context that does not fit its tensors says the
        # metadata was changed: check_fits says so first
        if not force and from_context:
            check_fits(meta, graph, arrays, path, context_used=True)
        if not force:
            refuse_other_network(meta, graph, force_hint="--force loads the tensors that match")
        check_fits(meta, graph, arrays, path, context_used=from_context, tensors=not force)
    except _training_errors() as e:
        _fail(e)
    return spec_obj, graph, arrays, meta, path


def _trained_model(spec, sets, input_shape, network, weights, target="cpu", force=False):
    """The network of SPEC with the weights of a `netspec train` run (or any weights file),
    its checked metadata (training.metadata) and how inputs are normalised (see
    _checked_weights); force loads the tensors that match by name and shape and names the rest."""
    from .fingerprint import describe
    from .network import Network
    from .training.metadata import UNSCALED_NORM
    spec_obj, graph, arrays, meta, path = _checked_weights(spec, sets, input_shape, network, weights, force)
    try:
        model = Network(spec_obj, graph).compile(training=False, target=target)
        if force:
            loaded, skipped = model.set_matching(arrays, source=str(path), error=_training_errors()[0])
            if skipped:
                click.echo(f"note: --force: loaded {len(loaded)} of {len(model.params)} tensors "
                           f"from {path}; {describe(skipped)}", err=True)
        else:
            model.set_weights(arrays, strict=True, source=str(path), error=_training_errors()[0])
    except _training_errors() as e:
        _fail(e)
    norm = meta.norm
    if norm is None:
        norm = UNSCALED_NORM
        click.echo(f"note: {path} holds no normalisation (not written by netspec train): inputs are "
                   "scaled to [0, 1] (8-bit / 255, 16-bit / 65535, floats as given), not standardised",
                   err=True)
    return graph, model, meta, norm


def _graph_from_context(spec, sets, input_shape, network, path):
    """The graph SPEC gives with the --set/--input stored in a weights file's metadata; stored
    settings that do not fit the spec are the file's fault (exit 1), not a usage error."""
    from .training.metadata import MetadataError, describe_flags
    try:
        return build_graph(spec, sets, input_shape, network)
    except (click.ClickException, SpecError) as e:
        reason = e.message if isinstance(e, SpecError) else e.format_message()
        raise MetadataError(f"{path}: the settings in its metadata 'context' "
                            f"({describe_flags(sets, input_shape)}) do not build {spec}: {reason}; "
                            "give --set/--input yourself") from None


@cli.command(name="eval")
@click.argument("spec", type=click.Path())
@_spec_options
@click.option("--weights", type=click.Path(), metavar="FILE",
              help="Weights from `netspec train` (default: runs/NETWORK/weights.safetensors).")
@click.option("--force", is_flag=True, help="Load the tensors of --weights that match by name and "
              "shape even when the file was saved from a different network, and name the rest.")
@click.option("--data", metavar="NAME|PATH", help="Data to score (default: the training run's).")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_target_option("Where to run the network: cpu, or cuda (an NVIDIA GPU).")
def eval_cmd(spec, sets, input_shape, network, weights, force, data, split, fmt, target):
    """Score trained weights: accuracy, loss, confusion matrix, per-class precision/recall/F1
    (for a segmentation network: per pixel, with each class's IoU and their mean)."""
    from .training.data import load_data
    from .training.run import check_task, classifies_pixels, renormalise, score
    from .lower.build import default_loss
    from .training.metadata import class_names_for
    graph, model, meta, norm = _trained_model(spec, sets, input_shape, network, weights, target, force)
    classes = model.program.tensors[next(iter(model.program.outputs.values()))].shape[-1]
    source = data if data is not None else meta.data
    loss = meta.loss or default_loss(graph)
    per_pixel = classifies_pixels(graph, loss)
    try:
        splits = load_data(source, graph.node(graph.inputs[0]).shape, classes)
        check_task(graph, loss, splits)
    except _training_errors() as e:
        _fail(e)
    ds = getattr(splits, split)
    if ds is None or not len(ds):
        raise click.ClickException(f"{splits.source} has no {split} split")
    names = class_names_for(meta, max(classes, 2))
    result = score(graph, model, renormalise(ds.x, splits.norm, norm), ds.y, loss, norm, names, split)
    counts = result["confusion_matrix"]
    if fmt == "json":
        click.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    console = Console(highlight=False)
    pixels = f" ({result['pixels']:,} pixels)" if per_pixel else ""
    console.print(f"{graph.name} on {splits.source}, {split} split: {len(ds):,} samples{pixels}",
                  soft_wrap=True)
    if per_pixel:
        console.print(f"pixel accuracy {result['accuracy']:.4f}   mean IoU {result['mean_iou']:.4f}   "
                      f"loss {result['loss']:.4f}")
    else:
        console.print(f"accuracy {result['accuracy']:.4f}   loss {result['loss']:.4f}")
    cm = Table(title="confusion matrix (rows: true class, columns: predicted)"
               + (", in pixels" if per_pixel else ""))
    cm.add_column("")
    for i in range(len(counts)):
        cm.add_column(names[i] if i < len(names) else str(i), justify="right")
    for i, row in enumerate(counts):
        cm.add_row(names[i] if i < len(names) else str(i), *[str(v) for v in row])
    console.print(cm)
    pc = Table(title="per class")
    for col in ("class", "precision", "recall", "F1", *["IoU"] * per_pixel, "support"):
        pc.add_column(col, justify="left" if col == "class" else "right")
    for r in result["per_class"]:
        iou = ["-" if r["iou"] is None else f"{r['iou']:.3f}"] if per_pixel else []
        pc.add_row(r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}",
                   *iou, str(r["support"]))
    console.print(pc)


@cli.command()
@click.argument("spec", type=click.Path())
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@_spec_options
@click.option("--weights", type=click.Path(), metavar="FILE",
              help="Weights from `netspec train` (default: runs/NETWORK/weights.safetensors).")
@click.option("--force", is_flag=True, help="Load the tensors of --weights that match by name and "
              "shape even when the file was saved from a different network, and name the rest.")
@click.option("-o", "--out", "out_file", metavar="FILE", help="Write the class probabilities to "
              "FILE (.csv, or .npy for the array); a detector's boxes to FILE (.csv); default: print them.")
@click.option("--draw", "draw_dir", type=click.Path(), metavar="FOLDER",
              help="A detector's inputs with their boxes drawn, one .png each, into FOLDER.")
@_target_option("Where to run the network: cpu, or cuda (an NVIDIA GPU).")
def predict(spec, inputs, sets, input_shape, network, weights, force, out_file, draw_dir, target):
    """Class probabilities for INPUTS (image files, or .npy/.npz arrays of raw images); for a
    detector (a spec with a detect section), its boxes after non-maximum suppression."""
    from .training.metadata import class_names_for
    from .training.predict import read_inputs, write_predictions
    graph, model, meta, norm = _trained_model(spec, sets, input_shape, network, weights, target, force)
    model.input_norm = norm         # raw inputs prepared as the training data were, as in Python
    shape = graph.node(graph.inputs[0]).shape
    try:
        names, raw = read_inputs(inputs, shape)
        if graph.detect is not None:
            _predict_boxes(graph, model, meta, norm, names, raw, out_file, draw_dir)
            return
        if draw_dir:
            raise click.UsageError("--draw draws a detector's boxes: this spec has no detect section")
        probs = model.predict(raw, batch_size=256).reshape(len(raw), -1)
    except _training_errors() as e:
        _fail(e)
    # one column per output; a single sigmoid unit is the probability of class 1
    classes = class_names_for(meta, max(probs.shape[1], 2))
    classes = classes if probs.shape[1] > 1 else classes[1:]
    click.echo(write_predictions(names, probs, classes, out_file))


def _predict_boxes(graph, model, meta, norm, names, raw, out_file, draw_dir):
    """`netspec predict` for a detector: its outputs decoded, suppressed, written and drawn."""
    from .detection import detect
    from .training.metadata import class_names_for
    from .training.predict import draw_detections, write_detections
    outs = model.predict(raw, batch_size=DETECT_BATCH)
    outputs = list(outs.values()) if isinstance(outs, dict) else [outs]
    shape = graph.node(graph.inputs[0]).shape
    try:
        found, count = detect(outputs, tuple(shape[1:]), graph.detect)
    except ValueError as e:     # the outputs are not what the decoder reads
        from .training.data import DataError
        raise DataError(f"the detect section's decoder '{graph.detect['decoder']['name']}' cannot "
                        f"read {graph.name}'s outputs: {e}") from None
    classes = class_names_for(meta, count)
    click.echo(write_detections(names, found, classes, out_file))
    if draw_dir:
        from .training.data import fit_raw
        click.echo(draw_detections(names, fit_raw(raw, shape, norm), found, classes, draw_dir))


DETECT_BATCH = 16   # a detector's maps are large: its inputs run 16 at a time


# ------------------------------------------------------------------ other frameworks' weights

@cli.command(name="weights")
@click.argument("spec", type=click.Path())
@_spec_options
@click.option("--from", "source", required=True, type=click.Path(), metavar="FILE",
              help="A PyTorch state dict (.safetensors or .npz; pickled .pt/.pth/.bin files are "
              "refused); with --to, netspec weights of SPEC.")
@click.option("-o", "--out", "out_file", metavar="FILE",
              help="Write the matched tensors as netspec weights of SPEC (.safetensors or .npz).")
@click.option("--to", "torch_file", metavar="FILE", help="The reverse: write the netspec weights "
              "of --from under the names of the PyTorch state dict --names (.safetensors or .npz).")
@click.option("--names", "names_file", type=click.Path(), metavar="FILE",
              help="With --to: a PyTorch state dict (.safetensors or .npz) giving the names.")
@click.option("--allow-partial", is_flag=True, help="Write the layers that match even when others "
              "do not (a new head: use the file with `netspec train --init-from`).")
def weights_cmd(spec, sets, input_shape, network, source, out_file, torch_file, names_file,
                allow_partial):
    """Match a PyTorch state dict to SPEC by structure (the order of its parameterised layers
    and their shapes, then names where same-shaped layers make that ambiguous), print what
    matched (netspec layer <- source prefix) and what did not, and write netspec weights; a
    partial match is refused unless --allow-partial. With --to and --names, the reverse."""
    from .interop.torch_weights import MatchError, PartialMatch, from_torch, read_state_dict, to_torch
    from .runtime.checkpoint import WeightsError, save_arrays, weights_format
    if (out_file is None) == (torch_file is None):
        raise click.UsageError("give -o FILE (a PyTorch state dict into netspec weights) or --to FILE "
                               "--names TEMPLATE (netspec weights under a state dict's names), one of them")
    if torch_file is not None and names_file is None:
        raise click.UsageError("--to needs --names TEMPLATE: the PyTorch state dict (.safetensors or "
                               ".npz) whose names to write under")
    if names_file is not None and torch_file is None:
        raise click.UsageError("--names goes with --to (it gives the names the reverse writes under)")
    written_to = out_file if out_file is not None else torch_file
    try:
        weights_format(written_to)
    except WeightsError as e:
        raise click.BadParameter(str(e), param_hint="-o" if out_file is not None else "--to") from None
    spec_obj, graph = build_graph(spec, sets, input_shape, network)
    try:
        if out_file is not None:
            arrays, _ = read_state_dict(_readable(source, "--from"))
            weights, match = from_torch(graph, arrays, source, allow_partial)
        else:
            weights = _netspec_weights(_readable(source, "--from"), graph)
            template, _ = read_state_dict(_readable(names_file, "--names"))
            state, match = to_torch(graph, weights, template, source, names_file, allow_partial)
    except PartialMatch as e:
        click.echo(e.match.table())
        found = e.match
        hint = (f"; --allow-partial writes the {len(found.exact)} layers that match (of the spec's "
                f"{len(found.pairs) + len(found.ours_unmatched)})" if found.exact else "")
        raise click.ClickException(f"{e}{hint}") from None
    except (MatchError, *_training_errors()) as e:
        _fail(e)
    click.echo(match.table())
    if out_file is not None:
        from .fingerprint import metadata
        from .training.metadata import WEIGHTS_FORMAT
        context = {"sets": list(sets), "input": input_shape, "network": network, "freeze": []}
        save_arrays(out_file, weights, {"network": graph.name, "format": WEIGHTS_FORMAT,
                                        "context": json.dumps(context), **metadata(graph, "float32")})
        written, layers = len(weights), len(match.exact)
    else:
        save_arrays(torch_file, state)
        written, layers = len(state), len(match.exact)
    partial = f" (partial: {match.problems()})" if not match.complete else ""
    click.echo(f"wrote {written_to}: {written} tensors of {layers} layers{partial}")


def _readable(path, flag: str):
    """path, when it is a regular file to read; else exit 1 saying what it is."""
    from .paths import not_a_file
    problem = not_a_file(path)
    if problem:
        raise click.ClickException(f"{flag} {path}: {problem}")
    return path


def _netspec_weights(path, graph):
    """The parameters of a netspec weights file or checkpoint for `graph` (refused, saying
    what differs, when it was saved from another network)."""
    from .training.metadata import refuse_other_network
    from .training.run import load_trained
    weights, meta = load_trained(path)
    refuse_other_network(meta, graph)
    return weights


# ------------------------------------------------------------------ entry point

@cli.command(name="export")
@click.argument("spec", type=click.Path())
@_spec_options
@click.option("-o", "--out", "out_file", required=True, metavar="FILE.onnx", help="The ONNX model to write.")
@click.option("--weights", type=click.Path(), metavar="FILE", help="Trained weights (netspec train's "
              "weights.safetensors, a checkpoint, `netspec weights` output); default: the network's "
              "initial weights, drawn with --seed as `netspec train` draws them.")
@click.option("--force", is_flag=True, help="Take the tensors of --weights that match by name and "
              "shape even when the file was saved from a different network (the rest: initial weights).")
@click.option("--seed", default=0, show_default=True, type=_count(0),
              help="Seed of the initial weights (without --weights).")
@click.option("--opset", type=_count(), default=DEFAULT_OPSET, show_default=True,
              help=f"ONNX opset: {MIN_OPSET} to the installed onnx package's newest.")
@click.option("--passes", "pass_list", metavar="LIST", help="Graph passes before export, as "
              "compile's --passes ('none': the network as written; default: all of them, batch "
              "norms folded into their layers' weights).")
def export_cmd(spec, sets, input_shape, network, out_file, weights, force, seed, opset, pass_list):
    """Write SPEC's inference network as an ONNX model: a dynamic batch dimension, names from
    the spec's paths, checked with onnx.checker. Needs `pip install 'netspec[onnx]'`."""
    from . import pipeline
    from .fingerprint import describe
    from .model import matching_tensors
    from .interop.onnx_export import ExportError, OnnxUnavailable, op_counts, parameter_count, require_onnx
    from .lower.init import initial_params
    from .outdirs import write_atomic
    from .passes.manager import PassError, select
    try:
        passes = select(pass_list)
    except PassError as e:
        raise click.BadParameter(str(e), param_hint="--passes") from None
    if Path(out_file).suffix.lower() != ".onnx":
        raise click.BadParameter(f"'{out_file}' must end in .onnx", param_hint="-o")
    try:
        require_onnx()
        if weights is not None:
            spec_obj, graph, arrays, meta, path = _checked_weights(spec, sets, input_shape, network,
                                                                   weights, force)
            norm = meta.norm
            params = initial_params(graph, seed)
            taken, skipped = matching_tensors(arrays, {k: v.shape for k, v in params.items()})
            if skipped:     # only with --force: _checked_weights refused otherwise
                click.echo(f"note: --force: took {len(taken)} of {len(params)} tensors from {path}, "
                           f"the rest initial weights; {describe(skipped)}", err=True)
            params.update(taken)
            source = f"weights {path}"
        else:
            spec_obj, graph = build_graph(spec, sets, input_shape, network)
            params = initial_params(graph, seed)
            source = f"initial weights (seed {seed}; give --weights for trained ones)"
            norm = None
        model = pipeline.export_onnx(graph, params, spec_obj.text, passes, opset, norm)
    except OnnxUnavailable as e:
        raise click.ClickException(str(e)) from None
    except ExportError as e:
        raise click.ClickException(e.message + (f"\nhint: {e.hint}" if e.hint else "")) from None
    write_atomic(out_file, model.SerializeToString())
    counts = op_counts(model)
    shown = ", ".join(f"{op} {n}" for op, n in list(counts.items())[:6])
    more = f", {len(counts) - 6} more kinds" if len(counts) > 6 else ""
    click.echo(f"exported {graph.name}: {sum(counts.values())} ONNX nodes ({shown}{more}), "
               f"{parameter_count(model):,} parameters from {source}, opset {opset} -> {out_file}")
    if norm is not None:
        click.echo("its input: floats in [0, 1] as netspec predict reads images (uint8 / 255); "
                   "it standardises them as training did")


def _show(e: click.ClickException) -> None:
    """click's report of a usage or command error, its "Error:" written "error:" as every
    other netspec message (and a compiler's) writes it."""
    buf = io.StringIO()
    e.show(file=buf)
    text = buf.getvalue()
    text = "error: " + text[len("Error: "):] if text.startswith("Error: ") else text
    click.echo(text.replace("\nError: ", "\nerror: "), err=True, nl=False)


# the words of the command line being run: `train --ranks N` starts the ranks with the same words
_invocation_words: list[str] = []


def main(argv=None) -> int:
    global _invocation_words
    words = sys.argv[1:] if argv is None else list(argv)
    _invocation_words = [str(w) for w in words]
    with_nul = next((w for w in words if "\x00" in str(w)), None)
    if with_nul is not None:    # no path or value holds one (an OS passes none in argv)
        click.echo(f"error: the argument {with_nul!r} holds a NUL byte, which no path or value "
                   "can hold", err=True)
        return EXIT_USAGE
    try:
        status = cli.main(args=argv, prog_name="netspec", standalone_mode=False)
        if isinstance(status, int) and not isinstance(status, bool):
            return status    # click.exceptions.Exit(code) from a command (train --ranks' ranks)
    except SpecError as e:
        click.echo(e.format(), err=True)
        return EXIT_SPEC
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return EXIT_SPEC
    except click.ClickException as e:
        _show(e)
        return EXIT_USAGE if isinstance(e, click.UsageError) else EXIT_SPEC
    except click.exceptions.Exit as e:
        return e.exit_code
    except TargetUnavailable as e:      # --target cuda without a GPU, driver or numba-cuda
        click.echo(f"error: {e}", err=True)
        return EXIT_SPEC
    except _PipeClosed as e:
        return _broken_pipe(e.error)
    except SystemExit:
        # click ends an EPIPE outside the commands (printing --help) with sys.exit(1), after
        # wrapping stdout and stderr to mute them
        if _click_muted(sys.stdout):
            return _broken_pipe(OSError(errno.EPIPE, os.strerror(errno.EPIPE)))
        raise
    except MemoryError as e:
        # the last line of defence: the commands check sizes before they allocate
        if os.environ.get("NETSPEC_DEBUG"):
            raise
        return _fail_plainly(f"not enough memory for {_command(argv)}: {e or 'MemoryError'}",
                             "use a smaller --batch or input, or a machine with more memory "
                             "(netspec summary SPEC --memory SIZE shows the largest batch that fits)")
    except RecursionError:
        if os.environ.get("NETSPEC_DEBUG"):
            raise
        return _fail_plainly(f"{_command(argv)}: the input is nested too deeply for netspec to follow",
                             "flatten the deepest nesting (brackets, expressions or blocks)")
    except OSError as e:
        if e.errno == errno.EPIPE:
            return _broken_pipe(e)
        click.echo(f"error: {e.strerror or e}" + (f": '{e.filename}'" if e.filename else ""), err=True)
        return EXIT_SPEC
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as e:  # an internal bug: say so plainly, traceback only on request
        if os.environ.get("NETSPEC_DEBUG"):
            raise
        click.echo(f"internal error: {type(e).__name__}: {e}\n"
                   "this is a bug in netspec; rerun with NETSPEC_DEBUG=1 for details", err=True)
        return EXIT_INTERNAL
    return 0


EXIT_BROKEN_PIPE = 128 + 13   # as a shell reports a command that SIGPIPE ended (`yes | head -1`)


def _command(argv) -> str:
    """'netspec NAME' for the command being run, for messages about the run as a whole."""
    words = sys.argv[1:] if argv is None else argv
    name = next((w for w in words if w in cli.commands), None)
    return f"netspec {name}" if name else "netspec"


def _fail_plainly(message: str, hint: str) -> int:
    click.echo(f"error: {message}\nhint: {hint}", err=True)
    return EXIT_SPEC


def _broken_pipe(e: OSError) -> int:
    """Whoever read our output stopped reading (`netspec summary ... | head -1`): stop quietly,
    as other command-line tools do. A broken pipe anywhere else is an error worth showing."""
    if _click_muted(sys.stdout):      # click's muting of stdout and stderr: undone
        sys.stdout = sys.stdout.wrapped
    if _click_muted(sys.stderr):
        sys.stderr = sys.stderr.wrapped
    if not _stdout_reader_gone():
        click.echo(f"error: {e.strerror or e}" + (f": '{e.filename}'" if e.filename else ""), err=True)
        return EXIT_SPEC
    try:  # the output still buffered would fail again when Python flushes it at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):   # no real file (a test's captured stdout)
        pass
    return EXIT_BROKEN_PIPE


def _click_muted(stream) -> bool:
    """Whether click wrapped the stream to mute it after an EPIPE (its PacifyFlushWrapper,
    named _PacifyFlushWrapper from click 8.5)."""
    return type(stream).__name__.lstrip("_") == "PacifyFlushWrapper" and hasattr(stream, "wrapped")


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe or socket whose reading end was closed."""
    import select
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)   # POLLERR and POLLHUP are reported regardless
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):   # no poll (Windows), or no real file
        return False


if __name__ == "__main__":
    sys.exit(main())
