"""`fedadapt bench`: the benchmark suite. Each section has fixed keys
(docs/reference/formats.md, bench.json) so results compare across commits; times are
medians in ms, memory is peak RSS in MB. Each section is a module here; a case that needs a
process of its own goes through `cases.run_case`."""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
from pathlib import Path

from fedadapt.atomic import atomic_write_text
from fedadapt.errors import FedAdaptError

# The sections `run` knows (the CLI offers these; deploy and scale are left out of its default).
SECTIONS = ("core", "aggregate", "export", "updates", "secagg", "deploy", "scale")
# `--provider`: fedadapt.onnx_adapter.PROVIDERS' names (that module imports onnxruntime,
# which the CLI's parser should not wait for).
PROVIDERS = ("cpu", "cuda")


def machine() -> dict:
    """Where the figures were measured: CPU model, cores, Python, torch, ORT and Flower versions,
    and the UTC date; stored beside every section, since figures only compare on one machine.
    """
    import flwr
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "flwr": flwr.__version__ if hasattr(flwr, "__version__") else _dist_version("flwr"),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def record(result: dict, section: str, figures: dict, where: dict) -> None:
    """Put one section's figures into `result`. `machine` is the latest run's; `machines`
    keeps each section's own, since sections merged from separate runs may come from
    different machines (or the same one, busier)."""
    result[section] = figures
    result["machine"] = where
    result.setdefault("machines", {})[section] = where


def section_key(section: str, provider: str) -> str:
    """bench.json's key for `section` measured on `provider`: the CPU figures keep the plain
    name, so a GPU run (`export_cuda`) is merged beside them rather than over them."""
    return section if provider == "cpu" else f"{section}_{provider}"


def run(out: Path, quick: bool, sections: list[str], provider: str = "cpu") -> dict:
    """Run `sections`, merging each into `out` as it ends. `provider` is the ONNX Runtime
    execution provider of the `export` section, the only one that runs ORT sessions; it is
    checked before any work, since a missing GPU build would otherwise surface (or worse,
    fall back to the CPU) only after the sections before it."""
    from fedadapt.bench import aggregate, core, deploy, export, scale, secagg, updates
    from fedadapt.onnx_adapter import execution_providers

    runners = {
        "core": core.run,
        "aggregate": aggregate.run,
        "export": functools.partial(export.run, provider=provider),
        "updates": updates.run,
        "secagg": secagg.run,
        "deploy": deploy.run,
        "scale": scale.run,
    }
    unknown = set(sections) - set(runners)
    if unknown:
        raise ValueError(f"unknown bench sections {sorted(unknown)}; have {sorted(runners)}")
    execution_providers(provider)
    if provider != "cpu" and set(sections) != {"export"}:
        raise FedAdaptError(
            f"--provider {provider} measures the export section only; run it with "
            "--sections export (the other sections would overwrite the CPU figures)"
        )
    # Merge into an existing file so sections measured by separate runs stay together.
    result = json.loads(out.read_text()) if out.exists() else {}
    where = machine()
    for name in sections:
        record(result, section_key(name, provider), runners[name](quick=quick), where)
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return result
