"""Ctrl-C that a long loop never loses. Python raises KeyboardInterrupt wherever the main thread is
when SIGINT arrives; raised inside a finaliser (a ``__del__``, a generator closed by the garbage
collector) it is reported as "ignored" and dropped, and the loop runs on. Under
:func:`remembered_interrupts` the interrupt is raised as usual and also remembered, and the loop's
``check()`` at each step raises it again if it was dropped."""

from __future__ import annotations

import contextlib
import signal
import threading


class Interrupts:
    def __init__(self):
        self.seen = False

    def handle(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.seen:
            raise KeyboardInterrupt


@contextlib.contextmanager
def remembered_interrupts():
    interrupts = Interrupts()
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not (
            signal.default_int_handler):
        yield interrupts  # signals are the main thread's; a caller's own handler is left alone
        return
    signal.signal(signal.SIGINT, interrupts.handle)
    try:
        yield interrupts
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
