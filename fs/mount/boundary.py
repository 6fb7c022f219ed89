"""The one errno boundary of the mount's FUSE handlers, and the lock gate in front of it.

pyfuse3 answers a handler's FUSEError with its errno; any other exception leaving a
handler ends pyfuse3.main(), which takes the whole mount down.  So every handler of both
request classes (Operations: a vault or shared directory; SingleFileOperations: a shared
file) is wrapped in `fuse`, which maps OSError to its errno, project errors to theirs and
anything else to EIO, and which refuses key-using requests while the mount is locked
(fs/mount/lockdown.py).
"""
from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3

from fs.errors import IntegrityError, UmbrafsError
from fs.mount.events import AUDITED, AUDITED_ERRORS
from fs.vault import backing

# What a locked mount still serves: nothing that needs a key or shows plaintext metadata.
LOCKED_OK = frozenset({"release", "releasedir", "forget", "statfs", "flush", "fsync"})

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class GatedOperations(pyfuse3.Operations):
    """What `fuse` needs of the object it serves: the lock flag, a refusal count, and where
    refused requests are recorded."""

    locked = False  # fs/mount/lockdown.py: keys dropped, requests refused
    locked_refusals = 0

    def refuse_locked(self, name: str, args: tuple[Any, ...]) -> None:
        if name in LOCKED_OK or (name == "getattr" and args[0] == pyfuse3.ROOT_INODE):
            return  # closing, forgetting and the root's (ciphertext) attributes need no key
        self.locked_refusals += 1
        raise pyfuse3.FUSEError(errno.EACCES)

    def record_refusal(self, name: str, args: tuple[Any, ...], code: int) -> None:
        """A request in events.AUDITED failed with an errno in events.AUDITED_ERRORS."""


def fuse(func: F) -> F:
    """Make *func*, a handler of a GatedOperations, answer only with FUSEError."""
    name = func.__name__
    audited = name in AUDITED
    log = logging.getLogger(func.__module__)  # messages name the handler's module, as before

    @functools.wraps(func)
    async def wrapper(self: GatedOperations, *args: Any) -> Any:
        if self.locked:  # the one test a request pays for locking
            self.refuse_locked(name, args)
        try:
            return await func(self, *args)
        except pyfuse3.FUSEError as exc:
            if audited and exc.errno in AUDITED_ERRORS:
                self.record_refusal(name, args, exc.errno)
            raise
        except IntegrityError as exc:
            log.error("integrity error in %s: %s", name, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except UmbrafsError as exc:
            log.warning("%s: %s", name, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            raise pyfuse3.FUSEError(backing.errno_of(exc)) from None
        except Exception:
            log.exception("unexpected error in %s", name)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]
