#!/usr/bin/env python3
"""Executes a notebook (default examples/seed_walkthrough.ipynb; also examples/cnf_likelihood.ipynb) against a
live server and fails on any error.

    python clients/python/tests/run_notebook.py [--url URL] [--output executed.ipynb]

Without --url it starts a server ($GRADSERVE_BIN, else a private copy of .build/release/gradserve) with a
temporary data directory and points the notebook at it through GRADSERVE_URL. A failed cell (including
a failed assert) makes the exit status 1. The report cell's text and whether it drew its figure are
printed; with --output the executed notebook is written there (the committed one stays output-free).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "e2e" / "support"))

from gradserve_testing.server import ServerProcess  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebook", nargs="?", default=str(REPO / "examples" / "seed_walkthrough.ipynb"))
    ap.add_argument("--url", help="use this server instead of starting one")
    ap.add_argument("--output", help="write the executed notebook here")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = ap.parse_args()

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    server = None
    if args.url:
        url = args.url
    else:
        server = ServerProcess().start()
        url = server.url
    os.environ["GRADSERVE_URL"] = url  # the kernel inherits it; the notebook's Client() reads it
    # The figure check below needs the inline backend, whatever MPLBACKEND the machine sets (Agg is common
    # on headless machines and would draw nothing into the notebook).
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    nb = nbformat.read(args.notebook, as_version=4)
    if any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
        print(f"{args.notebook}: committed with outputs; clear them (the repository keeps it output-free)", file=sys.stderr)
        return 1
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    # IPC sockets in a private directory: the kernel is local, and TCP without keys draws a warning.
    ipc_dir = tempfile.mkdtemp(prefix="gsnb-")
    # Nothing left on the machine may choose or shape the kernel: it runs this very interpreter (the venv
    # with gradserve and torch) from a kernelspec written here, not whatever `python3` kernelspec a Jupyter
    # directory holds, and with a fresh IPython directory (no profile or startup files from earlier use).
    kernels = Path(ipc_dir) / "kernels"
    write_kernel_spec(kernels / "gradserve-notebook")
    os.environ["IPYTHONDIR"] = str(Path(ipc_dir) / "ipython")
    km = KernelManager(
        kernel_name="gradserve-notebook",
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]),
        transport="ipc",
        ip=str(Path(ipc_dir) / "kernel"),
    )
    client = NotebookClient(
        nb, km=km, timeout=args.timeout, kernel_name="gradserve-notebook",
        resources={"metadata": {"path": str(Path(args.notebook).parent)}},
    )
    started = time.monotonic()
    status = 0
    try:
        client.execute()
    except CellExecutionError as e:
        print(f"notebook failed:\n{e}", file=sys.stderr)
        status = 1
    finally:
        if km.has_kernel:
            km.shutdown_kernel()
        shutil.rmtree(ipc_dir, ignore_errors=True)
        if server is not None:
            server.stop()
        if args.output:
            nbformat.write(nb, args.output)
    print(f"executed {args.notebook} against {url} in {time.monotonic() - started:.1f} s")
    for cell in nb.cells:
        if cell.cell_type != "code" or "report" not in cell.metadata.get("tags", []):
            continue
        figures = [o for o in cell.outputs if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})]
        for o in cell.outputs:
            if o.get("output_type") == "stream":
                print(o.get("text", ""), end="")
        if status == 0 and not figures:
            print("the report cell drew no figure", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
