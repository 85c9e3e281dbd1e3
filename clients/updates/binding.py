"""What a device's updates are bound to: its registry's id and its adapter's name.

`registry.json` in the device folder:

    {"adapter_name": "sentiment", "registry_id": "3f9c0a1b2c3d4e5f"}

Either may be null. Provisioning writes it (`fedadapt fetch --adapter-name`, or a package
that ships it); otherwise the first trusted timestamp that names a registry binds the device
to that registry (trust on first use), and the first install to that registry's adapter.
From then on a timestamp or channel file of another registry is refused before it is
recorded as seen (`wrong-registry`): one key may sign several registries, and a higher
version from another one would make the device refuse its own registry's next update as a
replay. A device bound to no registry yet (its registry predates ids) accepts files without
one, as before.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from fedadapt.atomic import PRIVATE, atomic_write_text
from fedadapt.errors import FedAdaptError
from fedadapt.updates.signed_meta import REGISTRY_ID_RE

BINDING_FILE = "registry.json"


@dataclass
class Binding:
    """The registry id and adapter name a device accepts updates for; None: not bound yet."""

    registry_id: str | None = None
    adapter_name: str | None = None

    @classmethod
    def load(cls, device_dir: str | Path) -> Binding:
        """The device's binding; unbound when the file does not exist. A file that exists but
        is not one raises `FedAdaptError`: reading it as unbound would undo the binding."""
        path = Path(device_dir) / BINDING_FILE
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text())
            b = cls(**raw)
        except (OSError, ValueError, TypeError) as e:
            raise FedAdaptError(f"{path} is corrupt ({e}); restore it") from e
        ok_id = b.registry_id is None or (
            isinstance(b.registry_id, str) and REGISTRY_ID_RE.match(b.registry_id)
        )
        ok_name = b.adapter_name is None or (isinstance(b.adapter_name, str) and b.adapter_name)
        if not ok_id or not ok_name:
            raise FedAdaptError(f"{path} must name a registry id and an adapter; restore it")
        return b

    def save(self, device_dir: str | Path) -> None:
        """Write the binding atomically (the device's own file: mode 0600)."""
        path = Path(device_dir) / BINDING_FILE
        atomic_write_text(path, json.dumps(asdict(self), sort_keys=True) + "\n", PRIVATE)

    def expect_name(self, name: str | None) -> None:
        """Take `name` (provisioned by the caller) as the adapter, or refuse a second one."""
        if name is None:
            return
        if self.adapter_name is not None and self.adapter_name != name:
            raise FedAdaptError(
                f"this device is provisioned for adapter {self.adapter_name!r}, not {name!r}"
            )
        self.adapter_name = name
