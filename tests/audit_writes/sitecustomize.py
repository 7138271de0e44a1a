"""Test support: a record of which process writes which file, for multi-process runs.

With this folder on PYTHONPATH, every Python process started (also the workers that
Detectron2's `launch` spawns, which inherit the environment) appends one line
"<pid>\\t<path>" to $REIN_D2_AUDIT_LOG for each file under $REIN_D2_AUDIT_DIR that it opens
for writing or moves into place (`os.replace`, as atomic writes do). It only watches
(Python's audit hooks); it never changes what the process does.
"""
import os
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR


def _install(root: str, log: str) -> None:
    root = os.path.realpath(root) + os.sep
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
        elif event == "os.rename":  # os.rename and os.replace
            path, writing = args[1], True
        else:
            return
        if writing and isinstance(path, (str, bytes, os.PathLike)):
            path = os.path.realpath(os.fsdecode(path))
            if path.startswith(root):
                os.write(fd, f"{os.getpid()}\t{path}\n".encode())

    sys.addaudithook(hook)


if os.environ.get("REIN_D2_AUDIT_DIR") and os.environ.get("REIN_D2_AUDIT_LOG"):
    _install(os.environ["REIN_D2_AUDIT_DIR"], os.environ["REIN_D2_AUDIT_LOG"])
