"""Nothing the user owns is lost to `netspec compile -o` or `netspec train -o` (issue 13, classes 1
and 8): netspec replaces or writes only folders it made (a marker file), refuses anything else at
once with a message naming the folder and the fix, writes files with the user's umask, and
removes the temporary files and folders a killed run left, never anything else."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from netspec import outdirs
from netspec.cli import main
from netspec.outdirs import BUILD_MARKER, RUN_MARKER, OutputFolderError
from netspec.outdirs import write_atomic
from netspec.testing.hostile import assert_refused, changes, run_netspec, tree_state

ROOT = Path(__file__).resolve().parent.parent
MLP = (ROOT / "specs" / "mlp.net").read_text()
TINY = """
network tiny() {
    input image: 1@8x8
    image -> flatten -> dense(10) -> softmax -> out
    train { optimizer = sgd(lr=0.1)  batch = 32  epochs = 1 }
}
"""


@pytest.fixture
def project(tmp_path):
    """A user's folder: a spec, a file of their own, and nothing of netspec's yet."""
    (tmp_path / "mlp.net").write_text(MLP)
    (tmp_path / "notes.txt").write_text("mine\n")
    return tmp_path


def compiled(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# ---------------------------------------------------------------- compile -o: data loss

def test_compile_refuses_a_folder_holding_the_users_files(project):
    keep = project / "d" / "keep.txt"
    keep.parent.mkdir()
    keep.write_text("x\n")
    before = tree_state(project)
    out = run_netspec("compile", "mlp.net", "-o", "d", cwd=project, timeout=30)
    assert_refused(out, "-o d holds files netspec did not write (keep.txt)", BUILD_MARKER,
                   "choose another folder", codes=(1,), seconds=20)
    assert changes(before, tree_state(project)) == []
    # the default build/NETWORK is held to the same rule
    (project / "build" / "mlp").mkdir(parents=True)
    (project / "build" / "mlp" / "keep.txt").write_text("x\n")
    before = tree_state(project)
    out = run_netspec("compile", "mlp.net", cwd=project, timeout=30)
    assert_refused(out, "build folder build/mlp holds files netspec did not write (keep.txt)",
                   codes=(1,), seconds=20)
    assert changes(before, tree_state(project)) == []


@pytest.mark.parametrize("target, words", [
    (".", "-o . is the current folder"),
    ("..", "-o .. contains the current folder"),
    ("../specs", "-o ../specs is the current folder"),
    ("", "-o '' is the current folder"),
])
def test_compile_refuses_the_current_folder_and_its_ancestors(tmp_path, target, words):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "mlp.net").write_text(MLP)
    (specs / BUILD_MARKER).write_text("even marked, the folder one stands in is not replaced\n")
    before = tree_state(tmp_path)
    out = run_netspec("compile", "mlp.net", "-o", target, cwd=specs, timeout=30)
    assert_refused(out, words, "a folder of its own", codes=(2,), seconds=20)
    assert changes(before, tree_state(tmp_path)) == []


def test_compile_refuses_a_build_folder_that_holds_the_spec_or_an_import(tmp_path):
    build = tmp_path / "b"
    build.mkdir()
    (build / BUILD_MARKER).write_text("")
    (build / "mlp.net").write_text(MLP)
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / BUILD_MARKER).write_text("")
    (lib / "blocks.net").write_text("block two(n) {\n    in x\n    out x -> dense(n, act=relu) -> dense(n)\n}\n")
    (tmp_path / "main.net").write_text('import "lib/blocks.net"\nnetwork m() {\n'
                                       '    input x: 16\n    x -> two(8) -> softmax -> out\n}\n')
    (build / "link.net").symlink_to(tmp_path / "main.net")     # the link itself would go
    before = tree_state(tmp_path)
    out = run_netspec("compile", "b/mlp.net", "-o", "b", cwd=tmp_path, timeout=30)
    assert_refused(out, "-o b contains b/mlp.net, a spec being compiled", codes=(2,), seconds=20)
    out = run_netspec("compile", "b/link.net", "-o", "b", cwd=tmp_path, timeout=30)
    assert_refused(out, "-o b contains b/link.net, a spec being compiled", codes=(2,), seconds=20)
    out = run_netspec("compile", "main.net", "-o", "lib", cwd=tmp_path, timeout=30)
    assert_refused(out, "-o lib contains lib/blocks.net, a spec being compiled", codes=(2,), seconds=20)
    assert changes(before, tree_state(tmp_path)) == []


def test_compile_refuses_a_file_and_a_path_through_a_file(project):
    before = tree_state(project)
    out = run_netspec("compile", "mlp.net", "-o", "notes.txt", cwd=project, timeout=30)
    assert_refused(out, "-o notes.txt is a file, not a folder", codes=(2,), seconds=20)
    out = run_netspec("compile", "mlp.net", "-o", "notes.txt/build", cwd=project, timeout=30)
    assert_refused(out, "notes.txt is a file, not a folder", codes=(2,), seconds=20)
    assert changes(before, tree_state(project)) == []


def test_compile_does_not_follow_a_link_to_replace_what_it_points_to(project, monkeypatch):
    # the link points at a real build folder, which compile could replace under its own name
    monkeypatch.chdir(project)
    assert main(["compile", "mlp.net", "-o", "build/mlp"]) == 0
    (project / "link").symlink_to("build/mlp")
    (project / "dangling").symlink_to("nowhere")
    before = tree_state(project)
    out = run_netspec("compile", "mlp.net", "-o", "link", cwd=project, timeout=30)
    assert_refused(out, "-o link is a symbolic link (to build/mlp)", "give the folder itself",
                   codes=(2,), seconds=20)
    out = run_netspec("compile", "mlp.net", "-o", "dangling", cwd=project, timeout=30)
    assert_refused(out, "-o dangling is a symbolic link", codes=(2,), seconds=20)
    assert changes(before, tree_state(project)) == []


def test_compile_refuses_a_run_folder(project, monkeypatch):
    monkeypatch.chdir(project)
    (project / "runs").mkdir()
    (project / "runs" / RUN_MARKER).write_text("")
    (project / "runs" / "weights.safetensors").write_bytes(b"precious")
    assert main(["compile", "mlp.net", "-o", "runs"]) == 1
    assert (project / "runs" / "weights.safetensors").read_bytes() == b"precious"


def test_compile_adopts_an_empty_folder_and_replaces_only_its_own(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    (project / "build").mkdir()
    assert main(["compile", "mlp.net", "-o", "build"]) == 0
    first = compiled(project / "build")
    assert BUILD_MARKER in first and "graph.json" in first and "kernels/fused_relu.py" in first
    assert "replaces it as a whole" in first[BUILD_MARKER].decode()
    # a marked build folder is replaced as a whole: a stray file in it does not survive
    (project / "build" / "stray.txt").write_text("gone with the old build\n")
    assert main(["compile", "mlp.net", "-o", "build", "--batch", "2"]) == 0
    second = compiled(project / "build")
    assert set(second) == set(first) and "batch 2" in second["summary.txt"].decode()
    # beside it: only the build folder and the user's own things, no temporary folder
    assert sorted(p.name for p in project.iterdir()) == ["build", "mlp.net", "notes.txt"]
    capsys.readouterr()


def test_compile_adopts_a_build_folder_of_an_older_netspec_and_nothing_more(project, monkeypatch):
    monkeypatch.chdir(project)
    assert main(["compile", "mlp.net", "-o", "old"]) == 0
    (project / "old" / BUILD_MARKER).unlink()           # as written before markers existed
    assert main(["compile", "mlp.net", "-o", "old"]) == 0
    assert (project / "old" / BUILD_MARKER).is_file()
    (project / "old" / BUILD_MARKER).unlink()
    (project / "old" / "kernels" / "my_notes.txt").write_text("mine\n")
    assert main(["compile", "mlp.net", "-o", "old"]) == 1
    assert (project / "old" / "kernels" / "my_notes.txt").read_text() == "mine\n"


def test_the_swap_never_removes_a_folder_that_is_not_netspecs(project, monkeypatch):
    """The old code moved the build aside to `.NAME.old`, deleting whatever was there first."""
    monkeypatch.chdir(project)
    build = project / "build"
    assert main(["compile", "mlp.net", "-o", "build/mlp"]) == 0
    for name, marked in {".mlp.old": False, ".mlp.abcd1234": False, ".mlp.0123abcd": True}.items():
        (build / name).mkdir()
        (build / name / "mine.txt").write_text("mine\n")
        if marked:
            (build / name / BUILD_MARKER).write_text("")
    # a build folder another compile is still writing: marked, and its writer holds the lock
    busy = build / ".mlp.5678abcd"
    busy.mkdir()
    (busy / BUILD_MARKER).write_text("")
    fd = os.open(busy, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert main(["compile", "mlp.net", "-o", "build/mlp"]) == 0
    finally:
        os.close(fd)
    left = sorted(p.name for p in build.iterdir())
    # the marked, unlocked one is a leftover of a killed compile: removed; all else kept
    assert left == [".mlp.5678abcd", ".mlp.abcd1234", ".mlp.old", "mlp"]
    assert (build / ".mlp.old" / "mine.txt").read_text() == "mine\n"


# ---------------------------------------------------------------- train -o

def test_train_refuses_a_folder_of_the_users_files_before_loading_any_data(project):
    (project / "r").mkdir()
    (project / "r" / "weights.safetensors").write_bytes(b"my own weights")
    before = tree_state(project)
    # the data does not exist: refusing the folder first proves nothing was loaded or compiled
    out = run_netspec("train", "mlp.net", "--data", "missing.npz", "-o", "r", cwd=project, timeout=30)
    assert_refused(out, "run folder r holds files netspec did not write (weights.safetensors)",
                   RUN_MARKER, "choose another -o", codes=(1,), seconds=20)
    out = run_netspec("train", "mlp.net", "--data", "missing.npz", "-o", ".", cwd=project, timeout=30)
    assert_refused(out, "run folder . holds files netspec did not write (mlp.net, notes.txt, r)",
                   codes=(1,), seconds=20)
    out = run_netspec("train", "mlp.net", "--data", "missing.npz", "-o", "notes.txt", cwd=project,
                      timeout=30)
    assert_refused(out, "run folder notes.txt is a file, not a folder", codes=(2,), seconds=20)
    assert changes(before, tree_state(project)) == []


def test_which_run_folders_train_may_write_into(tmp_path):
    check = outdirs.check_run_folder
    check(tmp_path / "new" / "run")                      # new
    (tmp_path / "empty").mkdir()
    check(tmp_path / "empty")
    marked = tmp_path / "marked"
    marked.mkdir()
    (marked / RUN_MARKER).write_text("")
    (marked / "notes.txt").write_text("the user's, left alone by train\n")
    check(marked)
    older = tmp_path / "older"                           # a run of a netspec before markers
    older.mkdir()
    (older / "checkpoint.safetensors").write_bytes(b"")
    (older / "history.json").write_text("[]")
    check(older)
    build = tmp_path / "build"
    build.mkdir()
    (build / BUILD_MARKER).write_text("")
    with pytest.raises(OutputFolderError, match="is a build folder of netspec compile"):
        check(build)
    only_weights = tmp_path / "w"
    only_weights.mkdir()
    (only_weights / "weights.safetensors").write_bytes(b"")
    with pytest.raises(OutputFolderError, match=r"holds files netspec did not write \(weights"):
        check(only_weights)
    marker_folder = tmp_path / "fake"                     # a marker that is not a file
    (marker_folder / RUN_MARKER).mkdir(parents=True)
    with pytest.raises(OutputFolderError, match="did not write"):
        check(marker_folder)
    (tmp_path / "dangling").symlink_to("nowhere")
    with pytest.raises(OutputFolderError, match="symbolic link to a missing folder"):
        check(tmp_path / "dangling")


# ---------------------------------------------------------------- the user's umask

@pytest.fixture
def umask():
    """Set the process umask for one test and restore it after."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_write_atomic_gives_new_files_the_umask_mode(tmp_path, umask, mask):
    umask(mask)
    write_atomic(tmp_path / "new.json", "{}")
    assert mode(tmp_path / "new.json") == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["new.json"]


def test_write_atomic_keeps_the_mode_of_the_file_it_replaces(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "w.json"
    path.write_text("old")
    path.chmod(0o640)
    write_atomic(path, "new")
    assert path.read_text() == "new" and mode(path) == 0o640


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_the_build_folder_has_the_umask_modes(tmp_path, monkeypatch, umask, mask, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlp.net").write_text(MLP)
    umask(mask)
    assert main(["compile", "mlp.net", "-o", "build/mlp"]) == 0
    folders = [tmp_path / "build", tmp_path / "build/mlp", tmp_path / "build/mlp/kernels"]
    assert {mode(p) for p in folders} == {0o777 & ~mask}
    files = [p for p in (tmp_path / "build").rglob("*") if p.is_file()]
    assert len(files) >= 10 and {mode(p) for p in files} == {0o666 & ~mask}
    # a replaced build folder keeps the mode its owner gave it
    (tmp_path / "build/mlp").chmod(0o750)
    assert main(["compile", "mlp.net", "-o", "build/mlp"]) == 0
    assert mode(tmp_path / "build/mlp") == 0o750
    capsys.readouterr()


def test_the_run_folder_has_the_umask_modes(tmp_path, umask):
    import netspec
    from netspec.lower.build import default_loss
    from netspec.training import config as C
    from netspec.training.data import digits_raw
    from netspec.training.run import train
    x, y = digits_raw()
    np.savez(tmp_path / "d.npz", x=x[:120].astype(np.uint8), y=y[:120])
    net = netspec.loads(TINY)
    cfg = C.resolve(net.graph.train, loss=default_loss(net.graph), data=str(tmp_path / "d.npz"))
    umask(0o077)
    train(net, TINY, {}, cfg, tmp_path / "runs" / "tiny", echo=lambda *a: None)
    run = tmp_path / "runs" / "tiny"
    assert mode(tmp_path / "runs") == mode(run) == 0o700
    names = sorted(p.name for p in run.iterdir())
    assert names == sorted(outdirs.RUN_FILES)
    assert {mode(run / n) for n in names} == {0o600}


# ---------------------------------------------------------------- leftovers

def test_a_new_run_removes_only_the_temporary_files_killed_runs_left(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_MARKER).write_text("")
    stale = [".checkpoint.safetensors.k2x_9a0b.tmp",          # tempfile's names (older netspec)
             ".history.json.0a1b2c3d.tmp", ".weights.safetensors.ffffffff.tmp"]
    kept = [".notes.txt.0a1b2c3d.tmp",                          # not a file netspec writes
            ".checkpoint.safetensors.toolong12.tmp",            # not the pattern
            "checkpoint.safetensors.0a1b2c3d.tmp",              # not hidden
            ".metrics.json.busy0000.tmp"]                       # its writer is alive (locked)
    for name in stale + kept:
        (run / name).write_bytes(b"partial")
    (run / ".history.csv.12345678.tmp").symlink_to(tmp_path / "elsewhere.txt")   # links: never
    (tmp_path / "elsewhere.txt").write_text("not netspec's\n")
    fd = os.open(run / ".metrics.json.busy0000.tmp", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert outdirs.prepare_run_folder(run) == 3
    finally:
        os.close(fd)
    assert sorted(p.name for p in run.iterdir()) == sorted(kept + [".history.csv.12345678.tmp",
                                                                   RUN_MARKER])
    assert (tmp_path / "elsewhere.txt").read_text() == "not netspec's\n"


def test_a_run_killed_while_writing_its_marker_leaves_a_folder_the_next_run_takes(tmp_path):
    """Killed before its marker was renamed into place, a first run leaves only the marker's
    temporary file: the next run takes the folder and removes it; another file is refused."""
    run = tmp_path / "run"
    run.mkdir()
    (run / f".{RUN_MARKER}.0a1b2c3d.tmp").write_bytes(b"half")
    outdirs.prepare_run_folder(run)      # the marker's own write removes its leftover first
    assert sorted(p.name for p in run.iterdir()) == [RUN_MARKER]
    other = tmp_path / "other"
    other.mkdir()
    (other / f".{RUN_MARKER}.0a1b2c3d.tmp").write_bytes(b"half")
    (other / "notes.txt").write_text("mine\n")
    with pytest.raises(outdirs.OutputFolderError, match="holds files netspec did not write"):
        outdirs.check_run_folder(other)


def test_writing_a_file_removes_its_own_abandoned_temporary_files(tmp_path):
    for name in (".out.svg.0a1b2c3d.tmp", ".out.svg.k2x_9a0b.tmp", ".other.svg.0a1b2c3d.tmp"):
        (tmp_path / name).write_bytes(b"half")
    write_atomic(tmp_path / "out.svg", "<svg/>")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.svg.0a1b2c3d.tmp", "out.svg"]


def test_a_writer_whose_temporary_file_was_removed_starts_over(tmp_path, monkeypatch):
    """Between creating its temporary file and locking it, a writer can lose it to another
    run's clean-up; it notices (no links left) and writes through a fresh one."""
    real_lock, calls = outdirs._lock, []

    def lock_after_a_cleanup(fd, shared=False, wait=True):
        if not calls:
            calls.append(fd)
            for p in tmp_path.glob(".w.json.*.tmp"):
                p.unlink()
        return real_lock(fd, shared, wait)
    monkeypatch.setattr(outdirs, "_lock", lock_after_a_cleanup)
    write_atomic(tmp_path / "w.json", "new")
    assert (tmp_path / "w.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["w.json"] and len(calls) == 1


def test_leftover_build_folders_need_the_marker_and_a_dead_writer(tmp_path):
    parent = tmp_path / "build"
    parent.mkdir()

    def folder(name, marker=True):
        (parent / name).mkdir()
        (parent / name / "graph.json").write_text("{}")
        if marker:
            (parent / name / BUILD_MARKER).write_text("")
    folder(".a.0a1b2c3d")
    folder(".b.k2x_9a0b")
    folder(".c.0a1b2c3d", marker=False)
    folder("d.0a1b2c3d")
    (parent / ".e.0a1b2c3d").symlink_to(parent / ".c.0a1b2c3d")
    (parent / ".f.0a1b2c3d").write_text("a file")
    assert outdirs.remove_leftovers(parent, build_folders=True) == 2
    assert sorted(p.name for p in parent.iterdir()) == [".c.0a1b2c3d", ".e.0a1b2c3d",
                                                        ".f.0a1b2c3d", "d.0a1b2c3d"]
    assert outdirs.remove_leftovers(parent) == 0             # folders only when asked


def test_markers_say_what_made_the_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlp.net").write_text(MLP)
    assert main(["compile", "mlp.net", "-o", "b"]) == 0
    text = (tmp_path / "b" / BUILD_MARKER).read_text()
    assert "netspec compile" in text and "replaces it as a whole" in text
    outdirs.prepare_run_folder(tmp_path / "r")
    text = (tmp_path / "r" / RUN_MARKER).read_text()
    assert "netspec train" in text and "other files are left alone" in text
    capsys.readouterr()


def test_fault_points_do_nothing_unless_named(monkeypatch):
    monkeypatch.delenv("NETSPEC_FAULT", raising=False)
    outdirs.fault_point("write_atomic:before_replace", "checkpoint.safetensors")
    for other in ("write_atomic:partial", "build_folder:before_swap",
                  "write_atomic:before_replace:weights.safetensors",
                  "write_atomic:before_replace:checkpoint.safetensors:2"):
        monkeypatch.setenv("NETSPEC_FAULT", other)
        outdirs.fault_point("write_atomic:before_replace", "checkpoint.safetensors")
    # still alive: the first hit of the last one was counted, not acted on
    assert outdirs._fault_hits["write_atomic:before_replace:checkpoint.safetensors:2"] == 1
    outdirs._fault_hits.clear()


def test_a_leftover_is_removed_without_following_its_links(tmp_path):
    """rmtree of a leftover folder removes a link inside it, never what the link points to."""
    parent = tmp_path / "build"
    (parent / ".x.0a1b2c3d").mkdir(parents=True)
    (parent / ".x.0a1b2c3d" / BUILD_MARKER).write_text("")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "data.txt").write_text("keep\n")
    (parent / ".x.0a1b2c3d" / "link").symlink_to(tmp_path / "precious")
    assert outdirs.remove_leftovers(parent, build_folders=True) == 1
    assert (tmp_path / "precious" / "data.txt").read_text() == "keep\n"
