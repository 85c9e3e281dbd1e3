"""What each device of `make deploy-demo` serves: its personalized ORT model against torch.

After the run, every device folder holds the exported graph, the personalized adapter file
the ClientApp wrote after its last evaluation, and `evaluation.json` with the figures torch
measured there. This reads the device's held-out split the way the ClientApp does (its own
data folder, else its demo partition), runs the personalized file through ONNX Runtime, and
puts the three accuracies side by side in `devices.json`:

    { "devices": [ {"node", "examples_train", "examples_heldout", "global_accuracy",
                    "personalized_accuracy_torch", "personalized_accuracy_ort"} ] }
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedadapt.atomic import atomic_write_text
from fedadapt.errors import FedAdaptError
from fedadapt.simconfig import SimConfig

DEVICES_FILE = "devices.json"


def held_out(cfg: SimConfig, device_dir: Path, node: int) -> tuple[list[str], list[int]]:
    """The device's held-out texts and labels: its `data/` folder, else demo partition."""
    data_dir = device_dir / "data"
    if data_dir.is_dir():
        from fedadapt.data import local_files
        from fedadapt.model_setup import label_names

        labels = label_names(cfg.dataset)
        fraction, key = local_files.recorded_split(device_dir)  # the split it trained with
        d = local_files.load(data_dir, labels, fraction, key, cfg.min_examples)
        data = d.data
    else:
        from fedadapt.data.partitions import client_data

        data = client_data(cfg, node - 1)
    return list(data.test_texts), list(data.test_labels)


def device_row(cfg: SimConfig, device_dir: Path, node: int) -> dict:
    """One device's row of `devices.json`: torch's figures from its `evaluation.json` beside the
    accuracy its personalized ONNX model reaches under ONNX Runtime, on the same held-out split.

    Raises `FedAdaptError` if the device never evaluated, serves no personalized model, or
    its held-out split here is not the size torch evaluated (another split would compare
    nothing).
    """
    from fedadapt.clients.personalized import EVALUATION_FILE
    from fedadapt.clients.runtime import EdgeRuntime

    path = device_dir / EVALUATION_FILE
    if not path.exists():
        raise FedAdaptError(f"{device_dir} has no {EVALUATION_FILE}: it never evaluated")
    torch_figures = json.loads(path.read_text())
    texts, labels = held_out(cfg, device_dir, node)
    if len(labels) != torch_figures["examples_heldout"]:
        raise FedAdaptError(
            f"{device_dir}: torch evaluated {torch_figures['examples_heldout']} held-out "
            f"examples, its data here has {len(labels)}: not the same split"
        )
    rt = EdgeRuntime(device_dir)
    if not rt.personalized:
        raise FedAdaptError(f"{device_dir} serves no personalized model")
    predicted = rt.logits(texts).argmax(axis=1)
    return {
        "node": node,
        "examples_train": torch_figures["examples_train"],
        "examples_heldout": len(labels),
        "global_accuracy": torch_figures["global_accuracy"],
        "personalized_accuracy_torch": torch_figures["personalized_accuracy"],
        "personalized_accuracy_ort": float(np.mean(predicted == np.array(labels))),
    }


def write_devices(cfg: SimConfig, device_dirs: dict[int, Path], out: Path) -> list[dict]:
    """`out/devices.json` for the devices `{node: folder}`; prints the table too."""
    rows = [device_row(cfg, folder, node) for node, folder in sorted(device_dirs.items())]
    atomic_write_text(out / DEVICES_FILE, json.dumps({"devices": rows}, indent=2) + "\n")
    print(table(rows), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table, one device a line, for the terminal."""
    head = "node  train  held-out  global  personalized (torch)  personalized (ORT)"
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['node']:>4}  {r['examples_train']:>5}  {r['examples_heldout']:>8}  "
            f"{r['global_accuracy']:>6.3f}  {r['personalized_accuracy_torch']:>20.3f}  "
            f"{r['personalized_accuracy_ort']:>18.3f}"
        )
    return "\n".join(lines)
