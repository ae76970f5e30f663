"""Test helper (on PYTHONPATH in a subprocess): makes chosen packages unimportable, as in Slicer's own Python.

SR4ZCT_BLOCK: comma-separated top-level names that behave as not installed (import raises ImportError,
importlib.util.find_spec gives None); SR4ZCT_BREAK: names whose import raises OSError (a broken install, e.g. a
missing CUDA library); SR4ZCT_IMPORT_LOG: a file that gets one line "<pid> <name>" per import statement of a
blocked or broken name. Processes started from this one inherit the environment, so the blocking holds there too.
"""

import builtins
import os
import sys

BLOCKED = {name for name in os.environ.get("SR4ZCT_BLOCK", "").split(",") if name}
BROKEN = {name for name in os.environ.get("SR4ZCT_BREAK", "").split(",") if name}
_import = builtins.__import__


def _log(name: str) -> None:
    log = os.environ.get("SR4ZCT_IMPORT_LOG")
    if log:
        with open(log, "a") as file:
            file.write(f"{os.getpid()} {name}\n")


def _logging_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name.split(".")[0] in BLOCKED | BROKEN:
        _log(name)
    return _import(name, globals, locals, fromlist, level)


class _Breaker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BROKEN:
            raise OSError(f"{name} is broken here (test: SR4ZCT_BREAK)")
        return None


for _name in list(sys.modules):
    if _name.split(".")[0] in BLOCKED | BROKEN:
        del sys.modules[_name]
for _name in BLOCKED:
    sys.modules[_name] = None  # what Python does for a module that must not be imported: ImportError, find_spec None
sys.meta_path.insert(0, _Breaker())
builtins.__import__ = _logging_import
