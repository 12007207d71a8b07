"""files: signals during a native writer wait for its end, whichever thread the OS gives them to."""

import signal
import threading
import time

import pytest

from reward_forcing.files import exit_on_signals, signals_deferred


def test_signals_deferred_holds_a_signal_that_another_thread_takes():
    """A process signal may go to any thread that does not block it (tqdm's monitor, a data
    worker); Python still runs the handler in the main thread. Before: only the main thread blocked
    the signal, so the handler raised inside the block (inside torch.save: a hang)."""
    ready, done = threading.Event(), threading.Event()
    other = threading.Thread(target=lambda: (ready.set(), done.wait(10)))
    other.start()
    ready.wait()
    reached = False
    try:
        with pytest.raises(SystemExit) as stopped:
            with exit_on_signals():
                with signals_deferred():
                    assert other.ident is not None
                    signal.pthread_kill(other.ident, signal.SIGTERM)
                    time.sleep(0.3)  # a raising handler would run here
                    reached = True
    finally:
        done.set()
        other.join()
    assert reached and stopped.value.code == 128 + signal.SIGTERM
