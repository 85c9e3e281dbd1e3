"""Every subcommand, fed bad input, answers with one line naming the problem, exit code 2,
no traceback, and no file changed in the folders it was pointed at."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from fedadapt.cli.app import main
from fedadapt.updates.keys import keygen

ROOT = Path(__file__).resolve().parents[3]


def _snapshot(*folders: Path) -> dict[str, str]:
    """Every path under `folders` with its content's SHA-256 (folders as 'dir')."""
    out = {}
    for folder in folders:
        for p in sorted([folder, *folder.rglob("*")]) if folder.exists() else []:
            out[str(p)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def fails(capsys, argv: list[str], message: str, *watched: Path) -> str:
    """Run `fedadapt argv`: it must exit 2 with exactly one stderr line containing
    `message`, no traceback, and leave every file under `watched` as it was."""
    before = _snapshot(*watched)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("fedadapt: error: ")
    assert message in err, err
    assert _snapshot(*watched) == before
    return err


def _free_port() -> int:
    """A port nothing listens on: bound, then closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def trust(tmp_path: Path) -> str:
    _, pub = keygen(tmp_path / "keys")
    return str(pub)


@pytest.fixture
def device(tmp_path: Path) -> Path:
    """A device folder whose runtime.json names a base (so fetch needs no torch)."""
    d = tmp_path / "device"
    d.mkdir()
    (d / "runtime.json").write_text(json.dumps({"base_sha256": "0" * 64}))
    return d


def _adapter(folder: Path, method: str = "lora", blob: bytes | None = None) -> Path:
    """A hand-made adapter folder: config naming `method`, tensors file `blob`."""
    folder.mkdir()
    blob = save({"w": np.zeros((2, 2), np.float32)}) if blob is None else blob
    (folder / "adapter_model.safetensors").write_bytes(blob)
    config = {
        "method": method,
        "base_model_sha256": "0" * 64,
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


# -- simulate: config files, flags, --set, --resume ------------------------------------


def test_missing_toml_file(tmp_path, capsys):
    missing = tmp_path / "none.toml"
    fails(capsys, ["simulate", "--config", str(missing)], f"config file {missing} does not exist")


def test_invalid_toml_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = [\n")
    fails(capsys, ["simulate", "--config", str(bad)], f"config file {bad} is not valid TOML", bad)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('rounds = "ten"', "config: rounds = 'ten' is not an integer"),
        ('codec = "zstd"', "config: codec = 'zstd' is not one of fp32, fp16, int8"),
        ('baselines = "False"', "config: baselines = 'False' is not a boolean (true or false)"),
        ("colour = 1", "config: unknown key 'colour'"),
    ],
)
def test_bad_values_in_a_toml_file(tmp_path, capsys, body, message):
    path = tmp_path / "c.toml"
    path.write_text(body + "\n")
    out = tmp_path / "run"
    fails(capsys, ["simulate", "--config", str(path), "--out", str(out)], message, tmp_path)
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--set", "rounds=-1"], "config: rounds = -1 is not an integer >= 1"),
        (["--rounds", "0"], "config: rounds = 0 is not an integer >= 1"),
        (["--set", "quantization=int3"], "config: quantization = 'int3' is not one of none,"),
        (["--set", "rounds=ten"], "config: rounds = 'ten' is not an integer"),
        (["--set", "rounds"], "--set wants KEY=VALUE, got 'rounds'"),
        (["--rounds", "ten"], "argument --rounds: invalid int value: 'ten'"),
        (["--codec", "zstd"], "argument --codec: invalid choice: 'zstd'"),
    ],
)
def test_bad_flags(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    fails(capsys, ["simulate", "--out", str(out), *flags], message, tmp_path)
    assert not out.exists()


@pytest.fixture
def checkpointed(tmp_path: Path) -> Path:
    from fedadapt.simconfig import SimConfig

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(SimConfig(out=str(run)).to_dict()))
    return run


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--strategy", "fedadam"], "--resume cannot change strategy"),
        (["--set", "seed=3"], "--resume cannot change seed"),
        (["--method", "lora"], "--resume cannot change method"),
        (["--clients", "30"], "--resume cannot change num_clients"),
        (["--config", "simulations/ci.toml"], "drop --config"),
    ],
)
def test_resume_refuses_overrides_it_cannot_apply(checkpointed, capsys, flags, message):
    fails(capsys, ["simulate", "--resume", str(checkpointed), *flags], message, checkpointed)


def test_resume_with_a_corrupt_config(checkpointed, capsys):
    (checkpointed / "config.json").write_text("{")
    fails(capsys, ["simulate", "--resume", str(checkpointed)], "config.json", checkpointed)


# -- the update channel ------------------------------------------------------------------


def test_fetch_from_a_refused_connection(device, trust, capsys):
    url = f"http://127.0.0.1:{_free_port()}"
    argv = ["fetch", "--url", url, "--device-dir", str(device), "--trust", trust]
    fails(capsys, argv, "Connection refused", device)


@pytest.mark.parametrize("url", ["htp://127.0.0.1:1", "http://[::1"])
def test_fetch_from_a_bad_url(device, trust, capsys, url):
    argv = ["fetch", "--url", url, "--device-dir", str(device), "--trust", trust]
    fails(capsys, argv, url, device)


def test_fetch_with_a_corrupt_state(device, trust, capsys):
    (device / "state.json").write_text("{not json")
    argv = ["fetch", "--url", "http://127.0.0.1:1", "--device-dir", str(device), "--trust", trust]
    fails(capsys, argv, f"the device state {device / 'state.json'} is unreadable", device)


def test_rollback_with_a_corrupt_state(device, capsys):
    (device / "state.json").write_text("[1, 2")
    fails(capsys, ["rollback", "--device-dir", str(device)], "state.json", device)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"base": 1}'])
def test_fetch_with_a_corrupt_runtime_file(device, trust, capsys, content):
    (device / "runtime.json").write_text(content)
    argv = ["fetch", "--url", "http://127.0.0.1:1", "--device-dir", str(device), "--trust", trust]
    fails(capsys, argv, f"the device's runtime file {device / 'runtime.json'}", device)


def test_fetch_a_registry_whose_fields_have_unexpected_types(tmp_path, device, trust, capsys):
    """A real registry, every integer in its JSON documents turned into a string."""
    from fedadapt.server.updates.service import UpdateServer

    registry = tmp_path / "registry"
    adapter = _adapter(tmp_path / "adapter")
    key = str(tmp_path / "keys" / "signing_key.pem")
    assert (
        main(["publish", "--adapter", str(adapter), "--registry", str(registry), "--key", key]) == 0
    )
    capsys.readouterr()

    def retype(v):
        if isinstance(v, dict):
            return {k: retype(x) for k, x in v.items()}
        if isinstance(v, list):
            return [retype(x) for x in v]
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    for doc in registry.rglob("*.json"):
        doc.write_text(json.dumps(retype(json.loads(doc.read_text()))))
    server = UpdateServer(registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        argv = ["fetch", "--url", server.url, "--device-dir", str(device), "--trust", trust]
        fails(capsys, argv, "malformed", device, registry)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("version", "2", "version must be an integer >= 1, got '2'"),
        ("payload_bytes", "344", "payload_bytes must be an integer >= 0, got '344'"),
        ("expires_at", 5, "expires_at must be an ISO 8601 time"),
        ("expires_at", "tomorrow", "expires_at must be an ISO 8601 time"),
        ("adapter_name", 7, "adapter_name must be a non-empty string, got 7"),
        ("from_version", "x", "from_version must be an integer >= 1, got 'x'"),
    ],
)
def test_fetch_a_signed_manifest_with_fields_of_unexpected_types(
    tmp_path, device, trust, capsys, field, value, message
):
    """A registry whose publisher signed a manifest with a field of the wrong type (the
    index pins it and the timestamp is re-signed, so only the manifest's types are wrong)."""
    from fedadapt.server.updates.service import UpdateServer
    from fedadapt.updates.bundles import canonical_json
    from fedadapt.updates.keys import load_private

    registry, key = tmp_path / "registry", tmp_path / "keys" / "signing_key.pem"
    adapter = _adapter(tmp_path / "adapter")
    argv = ["publish", "--adapter", str(adapter), "--registry", str(registry), "--key", str(key)]
    assert main(argv) == 0
    stem = registry / "v0001" / "full"
    manifest = json.loads(stem.with_suffix(".manifest.json").read_text())
    data = canonical_json({**manifest, field: value})
    stem.with_suffix(".manifest.json").write_bytes(data)
    stem.with_suffix(".sig").write_bytes(load_private(key).sign(data))
    index = json.loads((registry / "index.json").read_text())
    index["versions"][0]["full"]["manifest_sha256"] = hashlib.sha256(data).hexdigest()
    (registry / "index.json").write_text(json.dumps(index))
    assert main(["refresh-index", "--registry", str(registry), "--key", str(key)]) == 0
    capsys.readouterr()
    server = UpdateServer(registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        argv = ["fetch", "--url", server.url, "--device-dir", str(device), "--trust", trust]
        fails(capsys, argv, message, registry, adapter)
    finally:
        server.shutdown()
        server.server_close()
    assert not (device / "state.json").exists()  # nothing installed
    assert not list(device.glob("versions/*"))
    assert not list(device.glob("downloads/*"))


def test_publish_unreadable_safetensors(tmp_path, trust, capsys):
    adapter = _adapter(tmp_path / "adapter", blob=b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    registry = tmp_path / "registry"
    key = str(tmp_path / "keys" / "signing_key.pem")
    argv = ["publish", "--adapter", str(adapter), "--registry", str(registry), "--key", key]
    err = fails(capsys, argv, str(adapter), adapter, tmp_path / "keys")
    assert "deserializing" in err  # safetensors' own reason
    assert not registry.exists() or not any(registry.iterdir())


def test_publish_into_a_registry_with_a_corrupt_index(tmp_path, trust, capsys):
    adapter = _adapter(tmp_path / "adapter")
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "index.json").write_text('{"versions": [')
    key = str(tmp_path / "keys" / "signing_key.pem")
    argv = ["publish", "--adapter", str(adapter), "--registry", str(registry), "--key", key]
    fails(capsys, argv, f"the registry index {registry / 'index.json'} is unreadable", registry)


@pytest.mark.parametrize("command", ["keygen", "certs"])
def test_out_naming_a_file(tmp_path, capsys, command):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    fails(capsys, [command, "--out", str(target)], f"{target} is a file, not a folder", tmp_path)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "99999"], "argument --port: 99999 is not a port (1..65535)"),
        (["--port", "0"], "argument --port: 0 is not a port (1..65535)"),
        (["--max-connections", "0"], "argument --max-connections: 0 is not an integer >= 1"),
    ],
)
def test_serve_updates_bad_arguments(tmp_path, capsys, flags, message):
    fails(capsys, ["serve-updates", "--registry", str(tmp_path), *flags], message, tmp_path)


def test_serve_updates_missing_registry(tmp_path, capsys):
    missing = tmp_path / "none"
    fails(capsys, ["serve-updates", "--registry", str(missing)], f"{missing} is not a folder")


def test_serve_updates_on_a_port_in_use(tmp_path, capsys):
    (tmp_path / "index.json").write_text('{"versions": []}')
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = ["serve-updates", "--registry", str(tmp_path), "--port", str(port)]
        fails(capsys, argv, f"127.0.0.1:{port}: Address already in use", tmp_path)


# -- device folders, export, bench -----------------------------------------------------


def test_infer_without_the_model(device, capsys):
    (device / "runtime.json").write_text(json.dumps({"model_file": "model.onnx"}))
    fails(capsys, ["infer", "--device-dir", str(device), "hi"], "has no model.onnx", device)


@pytest.mark.parametrize("content", ["{not json", "[]"])
def test_infer_with_a_corrupt_runtime_file(device, capsys, content):
    (device / "runtime.json").write_text(content)
    message = f"the device's runtime file {device / 'runtime.json'}"
    fails(capsys, ["infer", "--device-dir", str(device), "hi"], message, device)


def test_export_merge_lora_of_a_bottleneck_adapter(tmp_path, capsys):
    adapter = _adapter(tmp_path / "adapter", method="bottleneck")
    out = tmp_path / "device"
    argv = ["export", "--adapter", str(adapter), "--out", str(out), "--merge-lora"]
    fails(capsys, argv, "--merge-lora needs a LoRA adapter", adapter)
    assert not out.exists()


def test_bench_unknown_section(tmp_path, capsys):
    argv = ["bench", "--out", str(tmp_path / "b.json"), "--sections", "bogus"]
    err = fails(capsys, argv, "argument --sections: invalid choice: 'bogus'", tmp_path)
    assert "'core', 'aggregate', 'export', 'updates', 'secagg', 'deploy'" in err


def test_bench_into_a_corrupt_file(tmp_path, capsys):
    (tmp_path / "b.json").write_text("[1]")
    argv = ["bench", "--out", str(tmp_path / "b.json"), "--sections", "core"]
    fails(capsys, argv, "is not a JSON object", tmp_path)


# -- the handler itself ----------------------------------------------------------------


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["--debug", "simulate", "--out", str(tmp_path / "r"), "--rounds", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ConfigError" in err
    assert err.splitlines()[-1] == "fedadapt: error: config: rounds = 0 is not an integer >= 1"


def test_an_unexpected_error_is_one_line_too(monkeypatch, tmp_path, capsys):
    """The last resort: an error no call site names (a bug) is still one line, exit 2."""
    import fedadapt.cli.updates

    def broken(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(fedadapt.cli.updates, "_rollback", broken)
    fails(capsys, ["rollback", "--device-dir", str(tmp_path)], "ZeroDivisionError: division")


def test_a_real_process_prints_one_line():
    """The same through `python -m fedadapt`: stderr is the one line, stdout is empty."""
    res = subprocess.run(
        [sys.executable, "-m", "fedadapt", "serve-updates", "--registry", ".", "--port", "99999"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr.splitlines() == [
        "fedadapt: error: argument --port: 99999 is not a port (1..65535) "
        "(see `fedadapt serve-updates --help`)"
    ]


# -- argument values, across the subcommands --------------------------------------------

ARGUMENTS = [
    ("", "the following arguments are required: command"),
    ("nonsense", "invalid choice: 'nonsense'"),
    ("deploy-demo --nodes 0", "argument --nodes: 0 is not an integer >= 1"),
    ("certs --out {tmp}/c --supernodes x", "argument --supernodes: 'x' is not an integer >= 0"),
    (
        "package-client --out {tmp}/p --certs {tmp} --superlink h:1 --port 0",
        "argument --port: 0 is not a port (1..65535)",
    ),
    (
        "package-client --out {tmp}/p --certs {tmp} --superlink h:1 --config c.toml --no-graph",
        "--config ships a device graph and --no-graph ships none: pick one",
    ),
    (
        "export --adapter {tmp} --out {tmp}/d --max-length 0",
        "argument --max-length: 0 is not an integer >= 1",
    ),
    (
        "infer --device-dir {tmp} --threads -1 text",
        "argument --threads: -1 is not an integer >= 0",
    ),
    ("rollback --device-dir {tmp}/none", "argument --device-dir: {tmp}/none is not a folder"),
    (
        "fetch --url http://127.0.0.1:1 --device-dir {tmp} --trust k --timeout 0",
        "argument --timeout: 0 is not a number > 0",
    ),
    (
        "publish --adapter {tmp}/none --registry {tmp}/r --key k",
        "argument --adapter: {tmp}/none is not a folder",
    ),
    (
        "refresh-index --registry {tmp}/none --key k",
        "argument --registry: {tmp}/none is not a folder",
    ),
    (
        "device run --device-dir {tmp} --superlink h:1 --root-cert c --node-key k --port 99999",
        "argument --port: 99999 is not a port (1..65535)",
    ),
]


@pytest.mark.parametrize(("command", "message"), ARGUMENTS)
def test_bad_argument_values(tmp_path, capsys, command, message):
    argv = command.replace("{tmp}", str(tmp_path)).split()
    fails(capsys, argv, message.replace("{tmp}", str(tmp_path)), tmp_path)


def test_an_empty_passphrase_is_refused_not_taken_for_no_encryption(tmp_path, capsys, monkeypatch):
    """keygen wrote the private key in the clear when $VAR was set but empty."""
    monkeypatch.setenv("EMPTY_PASS", "")
    argv = ["keygen", "--out", str(tmp_path / "keys"), "--passphrase-env", "EMPTY_PASS"]
    fails(capsys, argv, "the passphrase variable EMPTY_PASS is empty", tmp_path)
    assert not (tmp_path / "keys").exists()
