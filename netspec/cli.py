"""The `netspec` command. Bad specs exit 1 with a positioned error; bad usage exits 2."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import click

from .errors import OverrideError, SpecError

EXIT_SPEC = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


# ------------------------------------------------------------------ shared options

def _spec_options(f):
    f = click.option("--set", "sets", multiple=True, metavar="NAME=VALUE",
                     help="Override a network parameter, e.g. --set classes=1000.")(f)
    f = click.option("--input", "input_shape", metavar="[NAME=]SHAPE",
                     help="Override the input shape, e.g. --input 3@299x299.")(f)
    f = click.option("--network", metavar="NAME", help="Network to use when the file has several.")(f)
    return f


def _parse_sets(sets) -> dict:
    from .elaborate import parse_value
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
    from .parser import parse_shape_text
    name = None
    if "=" in text:
        name, text = text.split("=", 1)
    try:
        return {name: parse_shape_text(text)}
    except ValueError as e:
        raise click.BadParameter(f"cannot read shape '{text}': {e} (write C@HxW, e.g. 3@224x224, "
                                 "or a length such as 784)", param_hint="--input") from None


def build_graph(spec_path: str, sets=(), input_shape=None, network=None):
    """Load, elaborate and verify a spec the way every command does."""
    from .elaborate import elaborate
    from .loader import load
    from .shapes import verify
    overrides = _parse_sets(sets)
    inputs = _parse_input(input_shape)
    spec = load(spec_path)
    try:
        graph = elaborate(spec, network, overrides, inputs)
    except OverrideError as e:  # --set / --input / --network do not fit the spec: usage (exit 2)
        raise click.UsageError(f"{e.message}" + (f" ({e.hint})" if e.hint else "")) from None
    verify(graph)
    return spec, graph


# ------------------------------------------------------------------ commands

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1),
              help="Batch size for MACs and memory.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--depth", type=click.IntRange(min=0), default=None,
              help="Open N levels of blocks; fold deeper ones into one row each (0: one row per top-level block).")
@click.option("--memory", metavar="SIZE", help="Memory budget (e.g. 16GB): report the largest batch that fits.")
@click.option("--optimizer", metavar="NAME", help="Optimizer for the training memory estimate "
              "(default: the spec's train section, else adam).")
def summary(spec, sets, input_shape, network, batch, fmt, depth, memory, optimizer):
    """Print SPEC's layers with shapes, parameters, MACs, memory and receptive fields."""
    from .summary import parse_memory, summarize
    from .train_config import OPTIMIZERS
    budget = None
    if memory:
        try:
            budget = parse_memory(memory)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--memory") from None
    if optimizer and optimizer not in OPTIMIZERS:
        raise click.BadParameter(f"unknown optimizer '{optimizer}' (choose from {', '.join(OPTIMIZERS)})",
                                 param_hint="--optimizer")
    _, graph = build_graph(spec, sets, input_shape, network)
    s = summarize(graph, batch, optimizer)
    if fmt == "json":
        click.echo(json.dumps(s.to_json(depth, budget), indent=2))
    else:
        click.echo(s.table(depth, budget))


@cli.command(name="compile")
@click.argument("spec", type=click.Path())
@_spec_options
@click.option("-o", "--out", "out_dir", metavar="DIR", help="Build folder (default: build/NETWORK).")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1))
def compile_cmd(spec, sets, input_shape, network, out_dir, batch):
    """Check SPEC and write its build folder: graph, summary, the lowered program
    (program.txt: inference and training phases), diagrams and the spec itself."""
    from .lower.build import lower_program
    from .summary import summarize
    spec_obj, graph = build_graph(spec, sets, input_shape, network)
    target = Path(out_dir or Path("build") / graph.name)
    s = summarize(graph, batch)
    files = {
        "graph.json": json.dumps(graph.to_json(), indent=2) + "\n",
        "summary.txt": s.table() + "\n",
        "summary.json": json.dumps(s.to_json(), indent=2) + "\n",
        "spec.net": spec_obj.text,
        "program.txt": lower_program(graph, training=True).text(),
    }
    files.update(_diagrams(graph))
    write_build_folder(target, files)
    click.echo(f"compiled {graph.name}: {len(graph)} layers -> {target}/ ({', '.join(files)})")


def _diagrams(graph) -> dict:
    """diagram.svg (every layer) and, for nets with blocks, diagram_blocks.svg (blocks folded).

    Without Graphviz's dot the sources are written as .dot files instead, with a note.
    """
    from .render import pipe, to_dot
    views = {"diagram": to_dot(graph)}
    if graph.blocks:
        views["diagram_blocks"] = to_dot(graph, depth=0)
    out = {}
    try:
        for name, dot in views.items():
            out[f"{name}.svg"] = pipe(dot, "svg").decode("utf-8")
    except SpecError as e:
        click.echo(f"note: {e.message}; writing .dot sources instead ({e.hint})", err=True)
        out = {f"{name}.dot": dot.source for name, dot in views.items()}
    return out


@cli.command()
@click.argument("spec", type=click.Path())
@_spec_options
@click.option("-o", "--out", "out_file", required=True, metavar="FILE",
              help="Output file: .svg, .png, .pdf or .dot.")
@click.option("--depth", type=click.IntRange(min=0), default=None,
              help="Draw blocks nested deeper than N as one box each.")
@click.option("--rankdir", type=click.Choice(["TB", "LR"], case_sensitive=False), default="TB",
              show_default=True, help="Top to bottom or left to right.")
@click.option("--edge-shapes/--no-edge-shapes", default=False, help="Label edges with tensor shapes.")
@click.option("--fold/--no-fold", default=True, show_default=True,
              help="With --depth, draw a run of identical blocks once (residual(64) x3).")
def render(spec, sets, input_shape, network, out_file, depth, rankdir, edge_shapes, fold):
    """Draw SPEC's architecture with Graphviz."""
    from .render import FORMATS, render as draw
    suffix = Path(out_file).suffix.lstrip(".").lower()
    if suffix not in FORMATS:
        raise click.BadParameter(f"'{out_file}' must end in " + ", ".join("." + f for f in FORMATS),
                                 param_hint="-o")
    _, graph = build_graph(spec, sets, input_shape, network)
    path = draw(graph, out_file, depth, rankdir.upper(), edge_shapes, fold)
    click.echo(f"rendered {graph.name} -> {path}")


def write_build_folder(target: Path, files: dict[str, str]) -> None:
    """Write all files into a fresh folder and swap it in, so a failure leaves the old one whole."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise click.UsageError(f"'{target}' exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name, text in files.items():
            with open(tmp / name, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------ entry point

def main(argv=None) -> int:
    try:
        cli.main(args=argv, prog_name="netspec", standalone_mode=False)
    except SpecError as e:
        click.echo(e.format(), err=True)
        return EXIT_SPEC
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return EXIT_SPEC
    except click.ClickException as e:
        e.show()
        return EXIT_USAGE if isinstance(e, click.UsageError) else EXIT_SPEC
    except click.exceptions.Exit as e:
        return e.exit_code
    except OSError as e:
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


if __name__ == "__main__":
    sys.exit(main())
