"""fedadapt: federated on-device personalization with adapters over a frozen, quantized base.

`pyproject.toml` maps `clients/`, `server/` and `export/` into `fedadapt.clients`,
`fedadapt.server` and `fedadapt.export`. An installed wheel has them in place; a source tree
does not: a Flower app bundle (what a SuperNode unpacks and imports first) or this checkout
on `sys.path`. There the subpackages live beside this folder, so the tree's root joins the
package path.
"""

from pathlib import Path

_root = Path(__file__).resolve().parent.parent
if (_root / "clients" / "app.py").is_file() and (_root / "server" / "app.py").is_file():
    __path__.append(str(_root))
