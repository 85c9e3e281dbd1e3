"""Fixtures of the console's tests: one headless Chromium per module, real servers."""

from __future__ import annotations

import pytest

from tests.server.console.helpers import chromium


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """The OS's Chromium, headless; never skipped (CI installs it: .ci/run)."""
    driver = chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()
