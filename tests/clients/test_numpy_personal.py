"""A device personalizes in numpy on ONNX Runtime embeddings of its own data, without
importing torch, keeps the result private, and `infer` serves it."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fedadapt.cli.app import main
from fedadapt.clients.numpy_personal import MODES, RECORD_FILE, TENSORS_FILE
from tests.clients.conftest import link_graph

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REVIEWS = Path(__file__).parents[2] / "simulations/devices/device-1/data/reviews.csv"
NO_TORCH = """
import json, sys
from fedadapt.clients.numpy_personal import personalize
record = personalize(sys.argv[1])
assert "torch" not in sys.modules, "torch was imported"
print(json.dumps(record))
"""


@pytest.fixture
def device(graph, tmp_path) -> Path:
    folder = link_graph(graph, tmp_path / "device")
    (folder / "data").mkdir()
    shutil.copyfile(REVIEWS, folder / "data" / "reviews.csv")
    return folder


def test_personalize_without_torch_then_infer_serves_it(device, capsys):
    out = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(device)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    record = json.loads(out.stdout)
    assert set(record["held_out_accuracy"]) == set(MODES)
    assert record["mode"] in MODES and 0.0 <= record["lambda"] <= 1.0
    assert record["examples"]["train"] + record["examples"]["held_out"] == 35  # 37 rows, 2 dropped
    for name in (TENSORS_FILE, RECORD_FILE):
        assert stat.S_IMODE((device / name).stat().st_mode) == 0o600
    print(
        "MEASURED",
        json.dumps(record["held_out_accuracy"]),
        record["mode"],
        record["k"],
        record["lambda"],
    )

    assert main(["device", "personalize", "--device-dir", str(device)]) == 0
    printed = capsys.readouterr().out
    assert all(m in printed for m in MODES) and "(served)" in printed

    assert main(["infer", "--device-dir", str(device), "a moving, funny film"]) == 0
    got = capsys.readouterr()
    assert "personalized in numpy: " + record["mode"] in got.err
    assert got.out.count("\t") == 2

    assert main(["infer", "--global", "--device-dir", str(device), "a dull film"]) == 0
    assert "numpy" not in capsys.readouterr().err

    # fitted over another global adapter than the one in use: stale, not served
    stale = {**json.loads((device / RECORD_FILE).read_text()), "adapter_version": 99}
    (device / RECORD_FILE).write_text(json.dumps(stale))
    assert main(["infer", "--device-dir", str(device), "a dull film"]) == 0
    assert "numpy" not in capsys.readouterr().err


def test_bad_input_is_one_line(graph, tmp_path, capsys):
    device = link_graph(graph, tmp_path / "bare")
    assert main(["device", "personalize", "--device-dir", str(device)]) != 0
    err = capsys.readouterr().err
    assert "is not a folder" in err and "Traceback" not in err
    (device / "data").mkdir()
    assert main(["device", "personalize", "--device-dir", str(device)]) != 0
    err = capsys.readouterr().err
    assert "usable examples" in err and "Traceback" not in err
    (device / RECORD_FILE).write_text("{not json")
    assert main(["infer", "--device-dir", str(device), "a film"]) != 0
    err = capsys.readouterr().err
    assert "numpy personalization" in err and "Traceback" not in err
