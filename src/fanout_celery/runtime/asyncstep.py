"""``ctx.step`` for ``async def`` handlers: the same steps, awaited.

Step functions may be sync or async. Steps of one run execute one at a time, in the
order the handler reaches them; that order is what makes replay deterministic. Starting
a step while another is still executing (``asyncio.gather`` over steps) is rejected with
an error pointing to ``ctx.step.parallel``, which runs branches concurrently on
separate workers — never silently serialised with results in the wrong places.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, overload

from ..errors import InvalidStepError, NestedStepError
from ..model.events import Event, StreamedIds
from ..model.retry import RetryPolicy
from .core import StepCore
from .step import Step

# Set while a step's body runs, in that body's own context: a step called from inside it
# sees it (nesting); a step started by a sibling task of asyncio.gather does not.
_current_step: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fanout_current_step", default=None)


class AsyncStep:
    """Awaitable versions of every ``Step`` method."""

    def __init__(self, step: Step, core: StepCore) -> None:
        self._s = step
        self._core = core

    @property
    def attempt(self) -> int:
        return self._core.attempt

    def _check_idle(self, step_id: Any) -> None:
        if not self._core.in_step:
            return
        if _current_step.get() is not None:
            raise NestedStepError(
                f"step {step_id!r} was called inside another step's function; steps cannot "
                "be nested")
        raise InvalidStepError(
            f"step {step_id!r} started while step {self._core.active!r} was still executing: "
            "steps of one run execute one at a time (asyncio.gather over steps is not "
            "supported); use ctx.step.parallel to run branches concurrently")

    async def run(self, step_id: str, fn: Callable[..., Any], *args: Any,
                  retries: int | RetryPolicy | None = None, output_type: Any = None,
                  buffered: bool | None = None, **kwargs: Any) -> Any:
        """Like ``Step.run``; ``fn`` may be a coroutine function."""
        self._check_idle(step_id)
        core = self._core
        plan = core.plan_run(step_id, fn, retries, output_type, buffered)
        if plan.memoized:
            return plan.output
        core.in_step = True
        core.active = plan.key
        token = _current_step.set(plan.key)
        try:
            value = core.state.services.body(plan.call, lambda: fn(*args, **kwargs))
            if inspect.isawaitable(value):
                value = await value
        except InvalidStepError:
            raise
        except Exception as exc:
            core.in_step = False
            core.failed(plan, exc)
        finally:
            _current_step.reset(token)
            core.in_step = False
            core.active = None
        return core.completed(plan, value)

    async def patched(self, patch_id: str) -> bool:
        """``Step.patched``."""
        self._check_idle(patch_id)
        return self._s.patched(patch_id)

    @overload
    async def send_event(  # type: ignore[overload-overlap]
            self, step_id: str,
            events: Event | dict[str, Any] | list[Any] | tuple[Any, ...]) -> list[str]: ...
    @overload
    async def send_event(self, step_id: str, events: Iterable[Any]) -> StreamedIds: ...

    async def send_event(self, step_id: str, events: Any) -> list[str] | StreamedIds:
        """``Step.send_event``: a list, or a (synchronous) iterator sent as a stream."""
        self._check_idle(step_id)
        sent: list[str] | StreamedIds = self._s.send_event(step_id, events)
        return sent

    async def sleep(self, step_id: str, duration: Any) -> None:
        self._check_idle(step_id)
        self._s.sleep(step_id, duration)

    async def sleep_until(self, step_id: str, when: datetime) -> None:
        self._check_idle(step_id)
        self._s.sleep_until(step_id, when)

    async def wait_for_event(self, step_id: str, *, event: str, timeout: Any,
                             match: str | None = None) -> Event | None:
        self._check_idle(step_id)
        return self._s.wait_for_event(step_id, event=event, timeout=timeout, match=match)

    async def invoke(self, step_id: str, *, function: Any, data: dict[str, Any] | None = None,
                     timeout: Any = "1h") -> Any:
        self._check_idle(step_id)
        return self._s.invoke(step_id, function=function, data=data, timeout=timeout)

    async def parallel(self, step_id: str, branches: Sequence[Callable[[], Any]]) -> list[Any]:
        """Like ``Step.parallel``; each branch may be an async callable."""
        self._check_idle(step_id)
        return await self._s.parallel_async(step_id, branches)
