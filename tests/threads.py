"""Running one test body on several threads at once."""
from __future__ import annotations

import threading
from typing import Callable


def run_in_threads(work: Callable[[int], None], count: int = 8) -> None:
    """work(0) ... work(count - 1), each on its own thread, all started before any is joined."""
    threads = [threading.Thread(target=work, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
