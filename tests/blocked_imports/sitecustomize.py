"""Test helper (on PYTHONPATH in a subprocess): makes chosen packages unimportable, as in Slicer's own Python.

SR4ZCT_BLOCK: comma-separated top-level names whose import raises ImportError (as when not installed);
SR4ZCT_BREAK: names whose import raises OSError (a broken install, e.g. a missing CUDA library);
SR4ZCT_IMPORT_LOG: a file that gets one line "<pid> <name>" per blocked or broken import attempted.
Processes started from this one inherit the environment, so the blocking holds there too.
"""

import os
import sys

BLOCKED = {name for name in os.environ.get("SR4ZCT_BLOCK", "").split(",") if name}
BROKEN = {name for name in os.environ.get("SR4ZCT_BREAK", "").split(",") if name}


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top not in BLOCKED | BROKEN:
            return None
        log = os.environ.get("SR4ZCT_IMPORT_LOG")
        if log:
            with open(log, "a") as file:
                file.write(f"{os.getpid()} {name}\n")
        if top in BROKEN:
            raise OSError(f"{name} is broken here (test: SR4ZCT_BREAK)")
        raise ImportError(f"No module named {name!r} (test: SR4ZCT_BLOCK)", name=name)


for _name in list(sys.modules):
    if _name.split(".")[0] in BLOCKED | BROKEN:
        del sys.modules[_name]
sys.meta_path.insert(0, _Blocker())
