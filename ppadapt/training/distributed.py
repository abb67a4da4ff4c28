"""Which process this is when ``paddle.distributed.launch`` started several."""
from __future__ import annotations

import paddle


def rank_and_size() -> tuple[int, int]:
    """This process's rank and the number of processes (1 without a launcher)."""
    env = paddle.distributed.ParallelEnv()
    return int(env.rank), max(1, int(env.world_size))
