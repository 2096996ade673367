"""Every provider's simulator on one loopback port, each under its own path prefix."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from orchestrator.simulator.claravine import ClaravineSimConfig, ClaravineSimulator
from orchestrator.simulator.clari import ClariSimConfig, ClariSimulator
from orchestrator.simulator.clari_ingest import ClariIngestSimulator, IngestSimConfig
from orchestrator.simulator.claribi import ClariBISimConfig, ClariBISimulator
from orchestrator.simulator.claro import ClaroSimConfig, ClaroSimulator
from orchestrator.simulator.clayva import ClayvaSimConfig, ClayvaSimulator
from orchestrator.simulator.faults import Faults

PREFIXES = {
    "clari": "/clari/v4",
    "claravine": "/claravine/v1",
    "claro": "/claro/api/v2",
    "claribi": "/claribi/api/v1",
    "clayva": "/clayva/v1",
}
INGEST_PREFIX = "/clari/v2"  # Clari's ingest API lives under v2 (the exports under v4)


@dataclass(kw_only=True)
class Simulators:
    clari: ClariSimulator
    claravine: ClaravineSimulator
    claro: ClaroSimulator
    claribi: ClariBISimulator
    clayva: ClayvaSimulator
    clari_ingest: ClariIngestSimulator

    @classmethod
    def create(
        cls,
        *,
        clari: ClariSimConfig | None = None,
        claro: ClaroSimConfig | None = None,
        claravine: ClaravineSimConfig | None = None,
        claribi: ClariBISimConfig | None = None,
        clayva: ClayvaSimConfig | None = None,
        clari_ingest: IngestSimConfig | None = None,
        faults: Faults | None = None,
    ) -> Simulators:
        # Each provider has its own fault settings (its own /_sim/config), like its own server.
        return cls(
            clari=ClariSimulator(clari, faults),
            claravine=ClaravineSimulator(claravine),
            claro=ClaroSimulator(claro),
            claribi=ClariBISimulator(claribi),
            clayva=ClayvaSimulator(clayva),
            clari_ingest=ClariIngestSimulator(clari_ingest),
        )

    def app(self) -> web.Application:
        root = web.Application()
        root.add_subapp(PREFIXES["clari"], self.clari.app())
        root.add_subapp(PREFIXES["claro"], self.claro.app())
        root.add_subapp(PREFIXES["claravine"], self.claravine.app())
        root.add_subapp(PREFIXES["claribi"], self.claribi.app())
        root.add_subapp(PREFIXES["clayva"], self.clayva.app())
        root.add_subapp(INGEST_PREFIX, self.clari_ingest.app())

        async def index(_: web.Request) -> web.Response:
            return web.json_response({"providers": PREFIXES})

        root.router.add_get("/", index)
        return root


class SimulatorServer:
    """Runs the simulators inside the current event loop (tests, demo, `orchestrator simulate`)."""

    def __init__(
        self, sims: Simulators | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.sims = sims or Simulators.create()
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> SimulatorServer:
        self._runner = web.AppRunner(self.sims.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def base_url(self, provider: str) -> str:
        return f"http://{self.host}:{self.port}{PREFIXES[provider]}"
