"""One ClientApp process's own cost, as a deployed SuperNode pays it for every message.

Flower 1.42's SuperNode starts a fresh `flwr-clientapp` process per message. That process
imports Flower before it loads the app; what fedadapt adds is importing the app (torch
included) and building the model over the quantized base. Run as
`python -m fedadapt.bench.per_message`, it prints `{"imports", "base"}` in seconds; the
caller sets `$FEDADAPT_BASE_CACHE` (as `fedadapt device run` does) or leaves it unset.
"""

from __future__ import annotations

import json
import time


def main() -> None:
    import flwr.app
    import flwr.clientapp  # noqa: F401

    t0 = time.perf_counter()
    import fedadapt.clients.app  # noqa: F401

    t1 = time.perf_counter()
    from fedadapt.model_setup import build_model
    from fedadapt.simconfig import SimConfig

    build_model(SimConfig())
    t2 = time.perf_counter()
    print(json.dumps({"imports": t1 - t0, "base": t2 - t1}))


if __name__ == "__main__":
    main()
