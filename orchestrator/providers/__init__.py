"""Provider adapters. Importing this package registers every job kind."""

from orchestrator.providers import claravine as claravine
from orchestrator.providers import clari as clari
from orchestrator.providers import claribi as claribi
from orchestrator.providers import claro as claro
from orchestrator.providers import clayva as clayva
from orchestrator.providers.base import KINDS as KINDS
from orchestrator.providers.base import PROVIDERS as PROVIDERS
from orchestrator.providers.base import adapter_factory as adapter_factory
from orchestrator.providers.base import kind_spec as kind_spec
from orchestrator.providers.base import kinds_of as kinds_of

__all__ = [
    "KINDS",
    "PROVIDERS",
    "adapter_factory",
    "claravine",
    "clari",
    "claro",
    "clayva",
    "kind_spec",
    "kinds_of",
]
