"""Fixtures for the OpenAI SDK conformance tests.

The Rust black-box test `clients::openai_python_sdk` starts the real gateway and bridge-agent
with a scripted bridge peer and runs these tests with the addresses below in the environment.
"""
import os

import openai
import pytest


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run these tests through `scripts/test.sh`")
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
