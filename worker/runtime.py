"""Process-wide tuning for the processes that run the worker (``gpm run`` and its decoders)."""

from __future__ import annotations

import gc

# CPython collects its youngest generation after every 700 new container objects. Decoding
# makes a dict per node and a batch's layout a list per node and edge, so the collector ran
# every few hundred rows: about a quarter of decoding and layout time (50 stdlib files:
# layout + FalkorDB encoding 4.8 -> 3.4 us/node, decoding 6.4 -> 4.5). Those objects hold
# no cycles and are freed by reference counting anyway, so collecting less often keeps
# memory where it was.
YOUNG_GENERATION_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect the youngest generation less often; the older generations keep their ratios."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, older, oldest)
