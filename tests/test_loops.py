"""The loop the broker's own entry points start: uvloop's where installed, else asyncio's."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from broker_core import loops

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_turned_off_it_runs_on_asyncio_s_own_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_UVLOOP", "0")
    assert not loops.uses_uvloop()
    assert loops.run(_loop_module()).startswith("asyncio")


@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed (extra 'speed')")
def test_with_uvloop_installed_it_runs_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BROKER_UVLOOP", raising=False)
    assert loops.uses_uvloop()
    assert loops.run(_loop_module()).startswith("uvloop")
    loop = loops.new_event_loop()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()
