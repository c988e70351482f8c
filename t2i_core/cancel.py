"""The caller's Cancel check, for the long operations inside one call (attention chunks, the parts of a U-Net
block, the blocks of a VAE decode).

ComfyUI's nodes set it to `comfy.model_management.throw_exception_if_processing_interrupted`; raising from it
stops the operation there. A context variable, so concurrent threads keep their own, and unset (one lookup per
check) everywhere else.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator

_check: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("t2i_cancel_check", default=None)


def check_cancel() -> None:
    """Call the caller's check, if one is set."""
    check = _check.get()
    if check is not None:
        check()


def current_check() -> Callable[[], None] | None:
    return _check.get()


@contextlib.contextmanager
def calling(check: Callable[[], None] | None) -> Iterator[None]:
    """`check` is the Cancel check for the duration of a with-block (None: no check)."""
    token = _check.set(check)
    try:
        yield
    finally:
        _check.reset(token)


@contextlib.contextmanager
def checked_before(modules: Iterable) -> Iterator[None]:
    """The check runs before each of `modules` (torch modules) for the duration of a with-block; the hooks are
    removed after, so a module someone else owns (a ComfyUI VAE) is left as it was."""
    handles = [m.register_forward_pre_hook(lambda *_: check_cancel()) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
