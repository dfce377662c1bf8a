"""collapse_sim/process.py: the process-wide settings a run installs."""

from __future__ import annotations

import subprocess
import sys

ECHO_SCRIPT = """
import asyncio, sys
import tensorstore as ts
from collapse_sim import process
process.configure_logging_and_hooks()
# a tensorstore operation still in flight when the event loop awaiting it
# closes, as orbax's sibling writes are when one of them fails
promise, future = ts.Promise.new()
loop = asyncio.new_event_loop()
async def wait_briefly():
    asyncio.ensure_future(future)
    await asyncio.sleep(0.01)
loop.run_until_complete(wait_briefly())
loop.close()
promise.set_result(1)  # its callback now fails on the closed loop
class Other:
    def __del__(self):
        raise ValueError("an unrelated unraisable error")
Other()
print("finished", file=sys.stderr)
"""


def test_writes_ending_after_a_failed_save_print_no_traceback():
    """A save that fails (a full disk) closes orbax's event loop while other
    tensorstore writes are in flight; each one's completion then fails and
    tensorstore reports it as unraisable, a bare traceback that once broke the
    one-line error above. Exactly those are dropped; other unraisable errors
    still print."""
    p = subprocess.run([sys.executable, "-c", ECHO_SCRIPT], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "finished" in p.stderr
    assert "Event loop is closed" not in p.stderr, p.stderr
    assert "an unrelated unraisable error" in p.stderr, p.stderr
