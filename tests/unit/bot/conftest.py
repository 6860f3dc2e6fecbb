"""Fixtures for the bot tests (helpers live in bot_helpers.py)."""
import pytest

from bot_helpers import BotProcess, Clock, Rig, config_text, parse


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def cfg():
    return parse(config_text())


@pytest.fixture
def bot(tmp_path):
    b = BotProcess(tmp_path)
    yield b
    b.cleanup()


@pytest.fixture
def rig(tmp_path, clock):
    return Rig(tmp_path, clock)
