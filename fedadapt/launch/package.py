"""`fedadapt package-client`: one folder with everything an edge device needs to join.

The folder holds the fedadapt wheel with pinned requirements (only what a device imports:
no Ray, matplotlib or the ONNX exporter; flwr-datasets and the data-set packages only for a
demo partition), the base model files (so the device never fetches the base, and the wheel
stays small), the trust material (the CA certificate, this node's SuperNode key, optionally
the update-signing public key and the registry the device is bound to), the node config,
optionally the device graph of a run config (`device/`: inference without torch from the
first minute), and two scripts: `install.sh` makes a venv from the requirements, `start.sh`
runs `fedadapt device run`: the SuperNode, the signed-update loop and the personalized ORT
model, until SIGTERM.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import requires, version
from pathlib import Path

from packaging.requirements import Requirement

from fedadapt.atomic import atomic_write_text
from fedadapt.base.checkpoint import MODEL_DIR_ENV, MODEL_PACKAGE, base_sha256, model_dir
from fedadapt.errors import FedAdaptError
from fedadapt.launch.simulate import project_dir

INSTALL = """#!/usr/bin/env bash
# Make the device's venv from this folder: fedadapt, its pinned requirements, the data sets.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
"$python" -m venv "$here/venv"
# torch first, alone, from PyTorch's CPU-only index, on every architecture: PyPI's x86-64
# torch is the multi-GB CUDA build. Its version is requirements.txt's pin, which it then
# satisfies; its own dependencies come with the requirements. TORCH_INDEX names another
# index (a mirror); the machine's own pip options (find-links) still apply.
"$here/venv/bin/pip" install --quiet --no-deps --timeout 30 --retries 2 \
  --index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" \
  "$(grep '^torch==' "$here/requirements.txt")"
"$here/venv/bin/pip" install --quiet -r "$here/requirements.txt"
# no deps: the wheel's own metadata asks for Flower's simulation extra (Ray), matplotlib and
# the exporter, which a device never runs; requirements.txt holds what it does run
"$here/venv/bin/pip" install --quiet --no-deps "$here"/wheels/*.whl
if [ -s "$here/requirements-data.txt" ]; then
  "$here/venv/bin/pip" install --quiet --no-deps -r "$here/requirements-data.txt"
fi
echo "installed into $here/venv; start with $here/start.sh"
"""

START = """#!/usr/bin/env bash
# This device until SIGTERM: its SuperNode (TLS with trust/ca.crt, authenticated by
# trust/node.key, training on DEVICE_DIR/data when it exists), signed updates from UPDATE_URL
# when set, and the personalized ORT model in the device folder.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/node.env"
export FLWR_HOME="$here/.flwr" {model_env}="$here/model"
demo=()
device="${{DEVICE_DIR:-$here/device}}"
if [ "${{DEMO_DATA:-0}}" = 1 ] && [ ! -d "$device/data" ]; then
  demo=(--demo-data)  # a package made with the demo data sets, and no data of its own yet
fi
if [ -f "$here/trust/registry.json" ] && [ ! -e "$device/registry.json" ]; then
  # the registry and adapter this device takes updates for (its first install included)
  mkdir -p "$device" && cp "$here/trust/registry.json" "$device/registry.json"
fi
updates=()
if [ -n "${{UPDATE_URL:-}}" ]; then
  updates=(--update-url "$UPDATE_URL" --trust "$here/trust/update-signing.pub" \\
    --update-interval "${{UPDATE_INTERVAL:-3600}}")
fi
# VENV: where fedadapt is installed (install.sh's venv; on one machine trying several
# devices, the clone's .venv serves them all)
exec "${{VENV:-$here/venv}}/bin/fedadapt" device run --device-dir "$device" \\
  --superlink "$SUPERLINK" --root-cert "$here/trust/ca.crt" --node-key "$here/trust/node.key" \\
  --port "$PORT" --partition-id "$PARTITION_ID" --num-partitions "$NUM_PARTITIONS" \\
  ${{updates[@]+"${{updates[@]}}"}} ${{demo[@]+"${{demo[@]}}"}}
"""

PACKAGE_README = """This folder makes this machine one device of a fedadapt deployment.

1. ./install.sh      once: a Python venv with fedadapt and what a device needs
2. put the device's own examples in device/data/ (or in $DEVICE_DIR/data/ if node.env
   names another DEVICE_DIR): *.jsonl files, one {"text": ..., "label": ...} a line, or
   *.csv files with a text,label header. Without data/, start.sh trains on the package's
   demo data where it ships some, and refuses to start otherwise.
3. ./start.sh        the device until SIGTERM: its SuperNode, signed updates every
   UPDATE_INTERVAL seconds (node.env), its personalized model in device/ (VENV=DIR runs
   the fedadapt of another venv instead of install.sh's)

Status and logs: device/supernode.log, device/worker.log. Personal files in device/ are
readable by this user only.
"""

# What a device imports (a test checks it against the modules a device loads): training
# (torch, Flower without its simulation extra), the runtime (onnxruntime, tokenizers), the
# updater (httpx, cryptography) and the supervisor (psutil).
DEVICE_DISTRIBUTIONS = frozenset(
    {
        "torch",
        "flwr",
        "numpy",
        "safetensors",
        "tokenizers",
        "onnxruntime",
        "cryptography",
        "httpx",
        "tqdm",
        "psutil",
    }
)
DEMO_DISTRIBUTIONS = frozenset({"flwr-datasets"})  # the BBC demo partition
DEVICE_EXTRAS: dict[str, set[str]] = {"flwr": set()}  # a SuperNode needs no Ray, no Opacus


def _check_public_key(path: Path) -> None:
    """The update key a device trusts must be a public key: a private one copied into every
    device package would let anyone holding a package sign updates."""
    from cryptography.hazmat.primitives import serialization

    data = Path(path).read_bytes() if Path(path).is_file() else b""
    if b"PRIVATE KEY" in data:
        raise FedAdaptError(
            f"--update-key {path} is a private key: give its public key (.pub.pem); the "
            "private one never leaves the signer"
        )
    try:
        serialization.load_pem_public_key(data)
    except ValueError:
        raise FedAdaptError(f"--update-key {path} is not a PEM public key") from None


def registry_binding(registry: Path) -> dict[str, str]:
    """The registry id and adapter name a device is provisioned with (`--update-registry`),
    read from the registry's index: the device then refuses another registry's metadata and
    a first install of another adapter."""
    from fedadapt.updates.signed_meta import REGISTRY_ID_RE

    path = Path(registry) / "index.json"
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FedAdaptError(f"--update-registry: cannot read {path} ({e})") from None
    rid = index.get("registry_id") if isinstance(index, dict) else None
    name = index.get("adapter_name") if isinstance(index, dict) else None
    if not isinstance(rid, str) or not REGISTRY_ID_RE.match(rid):
        raise FedAdaptError(
            f"--update-registry: {path} names no registry id; `fedadapt refresh-index` once "
            "gives it one"
        )
    if not isinstance(name, str) or not name:
        raise FedAdaptError(f"--update-registry: {path} names no adapter; publish one first")
    return {"adapter_name": name, "registry_id": rid}


def runtime_requirements(demo_data: bool = True) -> list[str]:
    """The dependencies a device imports, pinned to the versions this machine runs and tests."""
    wanted = DEVICE_DISTRIBUTIONS | (DEMO_DISTRIBUTIONS if demo_data else frozenset())
    pins = []
    for spec in requires("fedadapt") or []:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # dev extras stay off the device
        if req.name.lower() not in wanted:
            continue
        extras = DEVICE_EXTRAS.get(req.name, req.extras)
        extras_text = f"[{','.join(sorted(extras))}]" if extras else ""
        public = version(req.name).split("+")[0]  # torch's "+cpu" names a build, not a release
        pins.append(f"{req.name}{extras_text}=={public}")
    return pins


def build_wheel(dest: Path) -> Path:
    """The fedadapt wheel from this checkout (no build isolation: nothing is downloaded)."""
    root = project_dir()
    if not (root / "pyproject.toml").exists():
        raise FedAdaptError(f"package-client builds from a source checkout; none at {root}")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
        cmd += ["--no-build-isolation", "--wheel-dir", tmp, str(root)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("fedadapt-*.whl"))
        if done.returncode != 0 or not wheels:
            raise FedAdaptError(f"building the fedadapt wheel failed:\n{done.stderr[-2000:]}")
        dest.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(wheels[0], dest))


def package_client(
    out: Path,
    certs: Path,
    node: int,
    superlink: str,
    partition_id: int | None = None,
    num_partitions: int | None = None,
    port: int = 9094,
    update_key: Path | None = None,
    update_url: str | None = None,
    config: Path | None = None,
    demo_data: bool = True,
    update_interval: float = 3600.0,
    update_registry: Path | None = None,
) -> Path:
    """Write the package for SuperNode `node` (its key is `certs/supernodes/node-N`); with
    `config`, its `device/` folder holds that run's device graph (exported here).
    `update_interval` is how often the device checks for a signed update (a failed check is
    tried again within a minute, then less often). `update_registry` (the registry folder)
    binds the device to that registry and its adapter (`trust/registry.json`)."""
    if update_url and update_key is None:
        raise FedAdaptError("--update-url needs --update-key: the key that signs the updates")
    if update_registry is not None and not update_url:
        raise FedAdaptError("--update-registry needs --update-url: where the device fetches")
    binding = registry_binding(update_registry) if update_registry is not None else None
    if update_key is not None:
        _check_public_key(update_key)
    key = certs / "supernodes" / f"node-{node}"
    for needed in (certs / "ca.crt", key, key.with_suffix(".pub")):
        if not needed.exists():
            raise FedAdaptError(f"{needed} is missing; make it with `fedadapt certs`")
    if out.exists() and any(out.iterdir()):
        raise FedAdaptError(f"{out} is not empty; package into a new folder")
    nodes = len(list((certs / "supernodes").glob("node-*.pub")))
    out.mkdir(parents=True, exist_ok=True)
    build_wheel(out / "wheels")
    pins = runtime_requirements(demo_data)
    atomic_write_text(out / "requirements.txt", "\n".join(pins) + "\n")
    data = (project_dir() / "requirements-data.txt").read_text().splitlines()
    data = [line for line in data if not line.startswith(MODEL_PACKAGE)]  # model/ holds it
    atomic_write_text(out / "requirements-data.txt", "\n".join(data) + "\n" if demo_data else "")
    shutil.copytree(model_dir(), out / "model")
    atomic_write_text(out / "model" / "SHA256", base_sha256() + "\n")

    trust = out / "trust"
    trust.mkdir()
    shutil.copy2(certs / "ca.crt", trust / "ca.crt")
    shutil.copy2(key.with_suffix(".pub"), trust / "node.key.pub")
    shutil.copy2(key, trust / "node.key")
    os.chmod(trust / "node.key", 0o600)
    if update_key is not None:
        shutil.copy2(update_key, trust / "update-signing.pub")
    if binding is not None:
        atomic_write_text(trust / "registry.json", json.dumps(binding, sort_keys=True) + "\n")

    env = {
        "SUPERLINK": superlink,
        "PARTITION_ID": node - 1 if partition_id is None else partition_id,
        "NUM_PARTITIONS": num_partitions or nodes,
        "PORT": port,
        "UPDATE_URL": update_url or "",
        "DEMO_DATA": int(demo_data),
        "UPDATE_INTERVAL": update_interval,
    }
    atomic_write_text(
        out / "node.env", "".join(f"{k}={shlex.quote(str(v))}\n" for k, v in env.items())
    )
    if config is not None:
        from fedadapt.export.device_graph import install_device_graphs
        from fedadapt.simconfig import SimConfig

        install_device_graphs(SimConfig.load(config), [out / "device"])
    atomic_write_text(out / "README.txt", PACKAGE_README)
    scripts = {"install.sh": INSTALL, "start.sh": START.format(model_env=MODEL_DIR_ENV)}
    for name, text in scripts.items():
        atomic_write_text(out / name, text)
        os.chmod(out / name, 0o755)
    return out
