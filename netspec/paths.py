"""Paths a user hands netspec: what is there when it is not a file netspec can read, in words.

A named pipe or a device is not "no such file": reading a FIFO would block until a writer
comes, /dev/zero would never end. Every reader checks with `not_a_file` first.
"""

from __future__ import annotations

import os
import stat

_FILE_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, for messages: 'a named pipe (FIFO)'..."""
    return next((what for test, what in _FILE_KINDS if test(mode)), "not a file")


def not_a_file(path) -> str | None:
    """Why `path` is not a regular file to read ('no such file', 'a folder, not a file',
    'not a regular file (it is a named pipe (FIFO))', ...), or None when it is one."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "no such file"
    except PermissionError:
        return "permission denied"
    except (OSError, ValueError) as e:        # a name too long, a NUL in it
        return f"cannot read it ({getattr(e, 'strerror', None) or e})"
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    if not stat.S_ISREG(mode):
        return f"not a regular file (it is {file_kind(mode)})"
    return None
