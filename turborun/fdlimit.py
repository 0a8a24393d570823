"""The open-file limit: every request in flight holds a socket in its worker process.

A process may raise its soft ``RLIMIT_NOFILE`` up to the hard one without privileges;
each worker process does so at start (its limit is its own), and the supervisor does
before starting them, so a run can hold thousands of requests in flight where the
shell's default soft limit (often 1,024) would stop it at a few hundred.
"""

from __future__ import annotations

try:
    import resource
except ImportError:  # not POSIX: nothing to raise, nothing known
    resource = None  # type: ignore[assignment]

# Descriptors a worker process needs besides its sockets: pipes, libraries, log files.
RESERVED_FDS = 128
_UNKNOWN = 1 << 20


def raise_open_file_limit(wanted: int = _UNKNOWN) -> tuple[int, int]:
    """Raise the soft limit toward ``wanted`` (at most the hard limit); return the
    (soft, hard) limits in force afterwards. Never raises."""
    if resource is None:
        return _UNKNOWN, _UNKNOWN
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return _UNKNOWN, _UNKNOWN
    ceiling = hard if hard != resource.RLIM_INFINITY else max(wanted, soft)
    target = min(max(wanted, soft), ceiling)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    return soft, hard


def sockets_per_process(soft_limit: int) -> int:
    """Requests one worker process can hold in flight under ``soft_limit``."""
    return max(1, soft_limit - RESERVED_FDS)
