"""Reading a spec and its imports: files, positions, blocks and networks by name.

Imports are resolved relative to the importing file and must stay inside the
project folder: the nearest ancestor of the main spec that holds a
`pyproject.toml`, `.git` or `netspec.toml`, else the main spec's own folder.
A file imported twice (a diamond) is read once; a cycle is an error.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from . import ast as A
from ..errors import OverrideError, Pos, SpecError, clip, remember_source
from .parser import parse, read_spec
from ..paths import file_kind

PROJECT_MARKERS = ("pyproject.toml", ".git", "netspec.toml")


@dataclass
class Spec:
    """A parsed spec with everything it imports."""

    main: str                                   # display path of the main file
    text: str
    blocks: dict[str, tuple[A.BlockDef, str]] = field(default_factory=dict)
    networks: dict[str, A.NetworkDef] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def network(self, name: str | None = None) -> A.NetworkDef:
        if not self.networks:
            raise SpecError(f"'{self.main}' defines no network", Pos(self.main, 1, 1),
                            hint="add `network name() { input x: ... -> out }`; "
                                 "files of blocks only are meant to be imported")
        if name is None:
            if len(self.networks) > 1:
                names = ", ".join(self.networks)
                raise OverrideError(f"'{self.main}' defines several networks ({names})",
                                hint="choose one with --network NAME")
            return next(iter(self.networks.values()))
        if name not in self.networks:
            from ..errors import did_you_mean
            raise OverrideError(f"no network named '{name}' in '{self.main}'",
                            hint=did_you_mean(name, self.networks) or
                            f"it defines: {', '.join(self.networks)}")
        return self.networks[name]


def display_path(p: Path) -> str:
    try:
        return os.path.relpath(p)
    except ValueError:
        return str(p)


def project_root(main: Path) -> Path:
    for folder in [main.parent, *main.parent.parents]:
        if any((folder / m).exists() for m in PROJECT_MARKERS):
            return folder
    return main.parent


def load(path: str | os.PathLike) -> Spec:
    """Read and parse a spec file and, recursively, the files it imports."""
    shown = str(path)
    text = read_spec(path)
    remember_source(shown, text)
    module = parse(text, shown)
    spec = Spec(main=shown, text=text)
    real = Path(path).resolve()
    root = project_root(real)
    _collect(spec, module, real, root, stack=[real], seen={real}, is_main=True,
             names={real: shown})
    return spec


def load_text(text: str, file: str = "<spec>", base: Path | None = None) -> Spec:
    """Parse spec text (tests, --stdin); imports resolve against `base` (default: cwd)."""
    remember_source(file, text)
    module = parse(text, file)
    spec = Spec(main=file, text=text)
    fake = (base or Path.cwd()).resolve() / "__main__.net"
    _collect(spec, module, fake, project_root(fake), stack=[fake], seen={fake}, is_main=True)
    return spec


def _collect(spec: Spec, module: A.Module, path: Path, root: Path, stack: list[Path],
             seen: set[Path], is_main: bool, names: dict[Path, str] | None = None) -> None:
    names = {} if names is None else names  # real path -> the name errors give the file
    spec.files.append(module.file)
    for item in module.items:
        if isinstance(item, A.Import):
            target = _import_target(path, item)
            shown = names.get(target) or _import_name(module.file, path, item.path, target)
            if not _inside(target, root):
                where = str(root) if os.path.isabs(spec.main) else display_path(root)
                raise SpecError(f"import '{clip(item.path, 200)}' points outside the project folder",
                                item.pos, hint=f"imports must stay inside {where}")
            if target in stack:
                cycle = " -> ".join(names.get(p, display_path(p))
                                    for p in stack[stack.index(target):] + [target])
                raise SpecError(f"import cycle: {cycle}", item.pos,
                                hint="move what both files need into a third file they both import")
            if target in seen:
                continue
            _check_importable(target, item, shown)
            seen.add(target)
            names[target] = shown
            try:
                text = read_spec(target, shown)
                remember_source(shown, text)
                imported = parse(text, shown)
            except SpecError as e:
                e.notes.append(("imported here", item.pos))
                raise
            _collect(spec, imported, target, root, stack + [target], seen, False, names)
        elif isinstance(item, A.BlockDef):
            from ..ops import OPS
            if item.name in OPS:
                raise SpecError(f"block '{item.name}' has the name of a built-in op", item.pos,
                                hint=f"choose another name, e.g. '{item.name}_block'")
            if item.name in spec.blocks:
                first = spec.blocks[item.name][0]
                raise SpecError(f"block '{item.name}' is defined twice", item.pos,
                                notes=[("first defined here", first.pos)])
            spec.blocks[item.name] = (item, module.file)
        elif isinstance(item, A.NetworkDef) and is_main:
            if item.name in spec.networks:
                raise SpecError(f"network '{item.name}' is defined twice", item.pos,
                                notes=[("first defined here", spec.networks[item.name].pos)])
            spec.networks[item.name] = item


def _import_target(importer: Path, item: A.Import) -> Path:
    """The real path an import names, or a SpecError at the import (a name too long for the
    file system, a path that cannot be resolved)."""
    name_max, path_max = _fs_limits(importer.parent)
    longest = max((len(part) for part in item.path.split("/")), default=0)
    if longest > name_max or len(item.path) > path_max:
        raise SpecError(f"import path is too long ({len(item.path):,} characters)", item.pos,
                        hint=f"a file or folder name has at most {name_max} characters, a path "
                             f"at most {path_max:,}")
    try:
        return (importer.parent / item.path).resolve()
    except (OSError, RuntimeError) as e:   # RuntimeError: a symlink loop (Python < 3.13)
        raise SpecError(f"cannot import '{clip(item.path, 200)}': "
                        f"{getattr(e, 'strerror', None) or e}", item.pos) from None


def _fs_limits(folder: Path) -> tuple[int, int]:
    """The longest file name and path the file system holding `folder` takes (255, 4096 on
    Linux's usual file systems)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):   # no pathconf (Windows) or no such name
        return 255, 4096


def _check_importable(target: Path, item: A.Import, shown: str) -> None:
    """The imported file exists and is a regular file (a pipe would block the reader)."""
    looked = f"looked for {clip(shown, 200)} (imports are relative to the importing file)"
    try:
        mode = target.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise SpecError(f"cannot import '{clip(item.path, 200)}': no such file", item.pos,
                        hint=looked) from None
    except OSError as e:
        raise SpecError(f"cannot import '{clip(item.path, 200)}': {e.strerror or e}", item.pos,
                        hint=looked) from None
    if stat.S_ISDIR(mode):
        raise SpecError(f"cannot import '{clip(item.path, 200)}': it is a folder, not a file",
                        item.pos, hint=looked)
    if not stat.S_ISREG(mode):
        raise SpecError(f"cannot import '{clip(item.path, 200)}': not a regular file "
                        f"(it is {file_kind(mode)})", item.pos,
                        hint="an import names a spec file (.net)")


def _import_name(importer: str, importer_path: Path, rel: str, target: Path) -> str:
    """Name an imported file the way its importer was named: specs/a.net imports
    "blocks.net" -> specs/blocks.net; an absolute importer gives an absolute name."""
    try:
        if Path(importer).resolve() == importer_path:
            joined = os.path.normpath(os.path.join(os.path.dirname(importer), rel))
            if Path(joined).resolve() == target:
                return joined
    except (OSError, ValueError):
        pass
    return display_path(target)


def _inside(target: Path, root: Path) -> bool:
    try:
        target.relative_to(root)
        return True
    except ValueError:
        return False
