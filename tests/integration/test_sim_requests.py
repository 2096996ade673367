"""The simulators' request log (GET /_sim/requests): what the replica chaos test reads to check
that no one-second window at a server held more requests than the configured rate."""

from __future__ import annotations

import aiohttp

from orchestrator.simulator.faults import max_in_window
from orchestrator.simulator.server import SimulatorServer
from tests.conftest import API_KEY


async def test_every_request_is_logged_with_its_path_and_second(sim: SimulatorServer) -> None:
    clari, clayva = sim.base_url("clari"), sim.base_url("clayva")
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.get(clari + "/admin/limits", headers={"apikey": API_KEY}) as r:
                assert r.status == 200
        async with s.get(clari + "/_sim/stats") as r:  # the simulator's own: not logged
            assert r.status == 200
        async with s.get(clari + "/_sim/requests") as r:
            log = await r.json()
        async with s.get(clayva + "/_sim/requests") as r:
            other = await r.json()
    assert [path for _, path in log["requests"]] == ["/clari/v4/admin/limits"] * 3
    assert sum(log["per_second"].values()) == 3
    assert log["max_per_second"] == 3
    assert other == {"requests": [], "per_second": {}, "max_per_second": 0}


def test_max_in_window_counts_the_busiest_sliding_second() -> None:
    assert max_in_window([]) == 0
    assert max_in_window([0.0, 0.5, 0.99, 1.0, 1.98]) == 3  # 0.0-0.99, then 0.99-1.98
    assert max_in_window([0.0, 1.0, 2.0]) == 1  # a request exactly a second later is not in it
    assert max_in_window([0.0, 0.1, 0.2, 5.0], window=10.0) == 4
