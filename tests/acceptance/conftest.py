from collections.abc import Iterator

import pytest

from tests.acceptance.helpers import simulator_process


@pytest.fixture
def simulator() -> Iterator[str]:
    yield from simulator_process()
