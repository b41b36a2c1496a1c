"""Version retirement rules of the registry (availability preserving), on real registry objects;
loading itself is exercised end to end in tests/test_server_versions.py."""

from __future__ import annotations

import asyncio

import pytest

from modelwarden.server.config import ModelConfig, ServerConfig
from modelwarden.server.registry import KEEP_ENDED, ModelEntry, Registry, VersionState, discover_versions


def registry(policy: str = "latest", **kw) -> tuple[Registry, ModelEntry]:
    m = ModelConfig(name="m", base_path="/nonexistent", version_policy=policy, **kw)
    reg = Registry(ServerConfig(models=(m,), request_timeout_s=1.0), lambda _e, _f: None)
    return reg, reg.models["m"]


def states(entry: ModelEntry) -> dict[int, str]:
    return {v: vs.state for v, vs in sorted(entry.versions.items())}


def add(entry: ModelEntry, version: int, state: str) -> VersionState:
    vs = entry.versions[version] = VersionState("m", version, f"/x/{version}", state=state)
    return vs


def run_retire(reg: Registry, entry: ModelEntry, wanted: set[int]) -> None:
    async def main() -> None:
        reg._retire(entry, wanted)
        await asyncio.gather(*list(reg._tasks))

    asyncio.run(main())


def test_old_version_serves_until_the_new_one_is_available():
    reg, e = registry()
    add(e, 1, "AVAILABLE")
    add(e, 2, "LOADING")
    run_retire(reg, e, {2})
    assert states(e) == {1: "AVAILABLE", 2: "LOADING"}
    e.versions[2].state = "AVAILABLE"
    run_retire(reg, e, {2})
    assert states(e) == {1: "END", 2: "AVAILABLE"}


def test_a_refused_new_version_leaves_the_old_one_serving():
    reg, e = registry()
    add(e, 1, "AVAILABLE")
    add(e, 2, "END").error_code = "FAILED_PRECONDITION"
    run_retire(reg, e, {2})
    assert states(e) == {1: "AVAILABLE", 2: "END"}


def test_retiring_waits_for_requests_holding_the_version():
    reg, e = registry()
    old = add(e, 1, "AVAILABLE")
    add(e, 2, "AVAILABLE")

    async def main() -> list[str]:
        seen = []
        with old.use():
            reg._retire(e, {2})
            await asyncio.sleep(0.2)
            seen.append(old.state)  # no new requests, the held one still runs
        await asyncio.gather(*list(reg._tasks))
        seen.append(old.state)
        return seen

    assert asyncio.run(main()) == ["UNLOADING", "END"]


def test_all_policy_keeps_every_version_and_ended_versions_are_bounded():
    reg, e = registry("all")
    for v in range(1, 4):
        add(e, v, "AVAILABLE")
    run_retire(reg, e, {1, 2, 3})
    assert states(e) == {1: "AVAILABLE", 2: "AVAILABLE", 3: "AVAILABLE"}
    for v in range(10, 10 + KEEP_ENDED + 5):
        add(e, v, "END")
    run_retire(reg, e, {1, 2, 3})
    assert len([s for s in states(e).values() if s == "END"]) == KEEP_ENDED


@pytest.mark.parametrize("policy,kw,want", [("latest", {"num_versions": 2}, [5, 3]), ("all", {}, [5, 3, 1]),
                                            ("specific", {"versions": (1, 9)}, [1])])
def test_discovery_applies_the_version_policy(tmp_path, policy, kw, want):
    for v in (1, 3, 5):
        (tmp_path / str(v)).mkdir()
    (tmp_path / ".incoming-7").mkdir()  # hidden while being copied: not a version
    m = ModelConfig(name="m", base_path=str(tmp_path), version_policy=policy, **kw)
    chosen, err = discover_versions(m)
    assert [v for v, _ in chosen] == want
    assert ("9" in err) == (policy == "specific")
