"""What the step mixins (waiting, parallel) rely on from ``Step``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .execution import Execution


class StepBase:
    """Declares the ``Step`` internals the mixins use; ``Step`` defines them."""

    _x: Execution
    _used: set[str]

    def _key(self, step_id: Any) -> str:
        raise NotImplementedError

    def _seq(self, record: dict[str, Any] | None) -> int:
        raise NotImplementedError

    def _encode(self, key: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError
