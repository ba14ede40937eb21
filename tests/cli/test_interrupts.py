"""A Ctrl-C that arrives while a finaliser runs is dropped by Python ("Exception ignored in ...");
under remembered_interrupts the training loop's next check raises it again."""

from __future__ import annotations

import gc
import os
import signal

import pytest

from crosslmm_cli.interrupts import remembered_interrupts


class SignalsWhenCollected:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)  # the handler runs here, inside the finaliser
        for _ in range(1000):
            pass


def drop_an_interrupt_in_a_finaliser() -> None:
    SignalsWhenCollected()  # collected at once: its __del__ swallows the KeyboardInterrupt
    gc.collect()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the interrupt the finaliser drops
def test_an_interrupt_dropped_by_a_finaliser_is_raised_at_the_next_check():
    with remembered_interrupts() as interrupts:
        drop_an_interrupt_in_a_finaliser()  # no exception escapes here
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

