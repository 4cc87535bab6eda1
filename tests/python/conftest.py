"""Fixtures for the OpenAI SDK conformance tests.

The Rust black-box test `clients::openai_python_sdk` starts the real gateway and bridge-agent
with a scripted bridge peer and runs these tests with the addresses below in the environment.
"""
import os
import sys

import openai
import pytest


def missing_dependency(what: str, how: str) -> None:
    """The rule of every suite: when CI is set to anything but false/0 a missing dependency fails
    the test; otherwise the test is skipped, loudly."""
    if os.environ.get("CI", "").strip().lower() not in ("", "false", "0"):
        pytest.fail(f"{what} is missing ({how}); CI is set, so this is a failure, not a skip")
    print(f"\n********** SKIPPED: {what} is missing ({how}) **********", file=sys.stderr)
    pytest.skip(f"{what} is missing ({how})")


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        missing_dependency(f"the variable {name} (the running services)",
                           "run these tests through `scripts/test.sh`, which starts them")
    return value


@pytest.fixture(scope="session")
def model() -> str:
    return _env("GW_MODEL")


@pytest.fixture(scope="session")
def client() -> openai.OpenAI:
    # The base URL exactly as a user types it into an editor.
    return openai.OpenAI(base_url=_env("GW_BASE_URL"), api_key=_env("GW_KEY"), max_retries=0)


@pytest.fixture(scope="session")
def limited_client() -> openai.OpenAI:
    """A gateway allowing a burst of one request."""
    return openai.OpenAI(base_url=_env("GW_LIMITED_URL"), api_key=_env("GW_KEY"), max_retries=0)


@pytest.fixture(scope="session")
def down_client() -> openai.OpenAI:
    """A gateway whose bridge-agent is not running."""
    return openai.OpenAI(base_url=_env("GW_DOWN_URL"), api_key=_env("GW_KEY"), max_retries=0)


@pytest.fixture(scope="session")
def small_client() -> openai.OpenAI:
    """A gateway whose model context is 2,000 tokens (LOCAL_PROVIDER_CONTEXT_WINDOW)."""
    return openai.OpenAI(base_url=_env("GW_SMALL_URL"), api_key=_env("GW_KEY"), max_retries=0)
