"""Pulling replies: the timeout runs from the last reply, so a long queue is not cut off."""

import time
from types import SimpleNamespace

from fedadapt.server.polling import QuickPollGrid


class SlowGrid:
    """A grid whose replies come one at a time, `gap` seconds apart; `dead` never reply."""

    def __init__(self, n: int, gap: float, dead: int = 0) -> None:
        self.n, self.gap, self.dead, self.start = n, gap, dead, 0.0

    def push_messages(self, messages):
        self.start = time.monotonic()
        return [str(i) for i in range(len(list(messages)))]

    def pull_messages(self, ids):
        due = int((time.monotonic() - self.start) / self.gap)
        ready = [i for i in ids if int(i) < min(due, self.n - self.dead)]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ready]


def test_replies_that_keep_coming_are_all_collected_past_the_timeout():
    grid = QuickPollGrid(SlowGrid(n=6, gap=0.1), interval=0.01)
    t0 = time.monotonic()
    replies = grid.send_and_receive(range(6), timeout=0.25)  # the whole queue takes ~0.6 s
    assert len(replies) == 6 and time.monotonic() - t0 > 0.25


def test_silent_clients_are_given_up_on_after_the_timeout():
    grid = QuickPollGrid(SlowGrid(n=4, gap=0.05, dead=2), interval=0.01)
    t0 = time.monotonic()
    replies = grid.send_and_receive(range(4), timeout=0.3)
    took = time.monotonic() - t0
    assert len(replies) == 2
    assert 0.3 < took < 1.5  # the last reply at ~0.1 s, then 0.3 s of silence


def test_progress_hears_each_batch_of_replies():
    grid = QuickPollGrid(SlowGrid(n=3, gap=0.05), interval=0.01)
    heard: list[tuple[int, int]] = []
    grid.send_and_receive(range(3), timeout=1.0, progress=lambda d, t: heard.append((d, t)))
    assert heard[-1] == (3, 3) and [d for d, _ in heard] == sorted({d for d, _ in heard})
