"""The command registry: a command is an async function of the supervisor and keyword
arguments, marked with `@command(name)`; its docstring is its help; its parameters are
checked before it runs. `collect` builds the registry from an explicit list of modules
(commands/__init__.py), so what exists is written down, not registered by an import's side
effect. The control server (and so the CLI) and the PMON TCP face all call `execute`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Mapping

from pmon.errors import ProtocolError

if TYPE_CHECKING:
    from pmon.runtime.supervisor import Supervisor

Handler = Callable[..., Awaitable[Any]]
MARK = "__pmon_command__"


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    params: dict[str, inspect.Parameter]

    @property
    def help(self) -> str:
        return inspect.getdoc(self.handler) or ""


_TYPES: dict[str, Any] = {
    "str": str, "int": int, "bool": bool, "list": list, "dict": dict, "str | int": (str, int),
    "int | None": (int, type(None)),
}


def command(name: str) -> Callable[[Handler], Handler]:
    """Mark a function as the command `name` (collected by `collect`)."""

    def mark(handler: Handler) -> Handler:
        setattr(handler, MARK, name)
        return handler

    return mark


def collect(modules: Iterable[ModuleType]) -> dict[str, Command]:
    registry: dict[str, Command] = {}
    for module in modules:
        for handler in vars(module).values():
            name = getattr(handler, MARK, None)
            if name is None or not callable(handler):
                continue
            if name in registry:
                raise RuntimeError(f"command '{name}' is defined twice ({module.__name__})")
            params = dict(list(inspect.signature(handler).parameters.items())[1:])
            registry[name] = Command(name, handler, params)
    return registry


async def execute(registry: Mapping[str, Command], sup: "Supervisor", name: Any, args: Any) -> Any:
    """Run one command. Raises ProtocolError for a malformed call, PmonError when refused."""
    if not isinstance(name, str) or name not in registry:
        known = ", ".join(sorted(registry))
        raise ProtocolError(f"unknown command {name!r}; known commands: {known}")
    if not isinstance(args, dict):
        raise ProtocolError(f"arguments of '{name}' must be an object, got {type(args).__name__}")
    cmd = registry[name]
    for key, value in args.items():
        if key not in cmd.params:
            raise ProtocolError(f"'{name}' takes no argument '{key}'; it takes: {', '.join(cmd.params) or 'none'}")
        expected = _TYPES.get(str(cmd.params[key].annotation))
        types = expected if isinstance(expected, tuple) else (expected,)
        if expected is not None and (
            not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        ):
            raise ProtocolError(f"argument '{key}' of '{name}' has the wrong type")
    missing = [k for k, p in cmd.params.items() if p.default is inspect.Parameter.empty and k not in args]
    if missing:
        raise ProtocolError(f"'{name}' needs the argument(s): {', '.join(missing)}")
    return await cmd.handler(sup, **args)
