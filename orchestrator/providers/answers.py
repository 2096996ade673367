"""Provider answers as typed models, parsed at the edge (issue 13 #5, issue 14 #2).

Each adapter declares a model (a subclass of `Answer`) for every answer it acts on and calls
`parse_answer` (or `HttpClient`'s JSON through `answer`). An answer of the wrong shape — a
missing field, a field of the wrong type, a list where an object was expected — becomes a
BadAnswer naming the provider, the endpoint and the field: a retryable provider error for that
call, never an AttributeError in the engine and never an empty success.

Models ignore fields they do not name (providers add fields) but keep them on the model
(`extra="allow"`), so code that still reads an item as a dict (`as_dict`) sees what came.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from orchestrator.errors import BadAnswer
from orchestrator.http import HttpClient

ANSWERS: list[type[Answer]] = []  # every model, for the property-based tests
M = TypeVar("M", bound="Answer")


class Answer(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        ANSWERS.append(cls)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="python")


def _id(value: Any) -> Any:
    """Identifiers come as strings (or, from some servers, integers); never booleans or
    objects, never empty."""
    if isinstance(value, bool):
        raise ValueError("an id must be a string")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    raise ValueError("an id must be a non-empty string")


RemoteId = Annotated[str, BeforeValidator(_id)]


def describe(exc: ValidationError) -> str:
    """The first problem as `field x.y: message` (pydantic's message, never the value)."""
    err = exc.errors(include_url=False, include_input=False)[0]
    loc = ".".join(str(x) for x in err.get("loc", ())) or "(the answer itself)"
    return f"field {loc}: {err.get('msg', 'invalid')}"[:300]


def parse_answer(model: type[M], data: Any, *, provider: str, where: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadAnswer(provider, f"{where}: unexpected answer, {describe(exc)}") from None
    except (RecursionError, ValueError, TypeError) as exc:  # a validator gave up on the shape
        raise BadAnswer(provider, f"{where}: unexpected answer ({type(exc).__name__})") from None


async def answer(http: HttpClient, model: type[M], method: str, path: str, **kw: Any) -> M:
    """The call's JSON answer, as `model`."""
    data = await http.json(method, path, **kw)
    return parse_answer(model, data, provider=http.provider, where=http.endpoint(method, path))
