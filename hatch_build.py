"""Compiles Quiver's native row-scan kernel (server/quiver/server/native/rowscan.c) into
a shared library next to it, for wheels and editable installs alike, with the machine's own
vector instructions (-march=native, as hnswlib is built here). Without a C compiler the
build goes on and Quiver uses its numpy path (core/row_scan.py says which it loaded)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("server/quiver/server/native/rowscan.c")
LIBRARY = Path("server/quiver/server/native/_rowscan.so")
# Integer sums only (exact): no float flags needed, and never -ffast-math, whose start-up
# code would flush subnormal floats to zero for the whole process.
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared"]


class NativeKernelHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            self.app.display_warning("no C compiler: the row-scan kernel falls back to numpy")
            return
        out = root / LIBRARY
        done = subprocess.run(
            [compiler, *FLAGS, "-o", str(out), str(root / SOURCE)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            self.app.display_warning(f"row-scan kernel not built ({done.stderr.strip()[:500]})")
            return
        if version != "editable":  # a wheel carries it (and is then for this platform only)
            build_data["force_include"][str(out)] = str(LIBRARY.relative_to("server"))
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
