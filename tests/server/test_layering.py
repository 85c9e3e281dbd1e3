"""The server never imports the device side.

The server builds the same model as the devices from the core (`fedadapt.model_setup`), so a
server install needs nothing of the device runtime. The check (shared with the
clients/export rule) reads each module's syntax tree, so a lazy import counts too.
"""

from tests.export.test_layering import offenders


def test_the_server_imports_nothing_from_clients() -> None:
    assert offenders("server", "fedadapt.clients") == []


def test_the_check_names_a_server_module_that_would(tmp_path, monkeypatch) -> None:
    import tests.export.test_layering as layering

    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "x.py").write_text("def f():\n    from fedadapt.clients import app\n")
    monkeypatch.setattr(layering, "ROOT", tmp_path)
    assert offenders("server", "fedadapt.clients") == [
        "server/x.py imports fedadapt.clients",
        "server/x.py imports fedadapt.clients.app",
    ]
