"""More than one device (issue 5): ``python -m paddle.distributed.launch --nproc_per_node 2``
runs train.py / transfer.py data-parallel (gloo on this CPU machine); the epoch's
(seed, epoch) order is split between the ranks; weights stay identical on every rank;
only rank 0 writes and prints."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from cifar_archive import write_cifar_archive
from ppadapt.data.sampler import EpochBatchSampler, SeededDataset, epoch_permutation

REPO = Path(__file__).resolve().parent.parent
TINY = ["-o", "model.embed_dim=32", "-o", "model.depth=2", "-o", "model.num_heads=2", "-o", "model.patch_size=8",
        "-o", "adapter.bottleneck=8", "-o", "warmup_steps=4", "--batch-size", "8", "--epochs", "2", "--quiet"]


# -- the sampler -------------------------------------------------------------------------

def test_order_depends_only_on_seed_and_epoch_and_skip_resumes_it():
    a, b = EpochBatchSampler(37, 5, seed=3), EpochBatchSampler(37, 5, seed=3)
    a.set_epoch(4)
    b.set_epoch(0)
    list(b)  # whatever came before does not matter
    b.set_epoch(4)
    assert list(a) == list(b) and len(a) == 8
    assert [i for batch in a for _, i in batch] == epoch_permutation(37, 3, 4).tolist()
    assert all(e == 4 for batch in a for e, _ in batch)
    b.set_epoch(4, skip=3)
    assert list(b) == list(a)[3:]
    a.set_epoch(5)
    assert list(a) != list(b)


@pytest.mark.parametrize("n,batch,ranks", [(37, 5, 2), (60, 8, 2), (10, 4, 3), (64, 8, 4)])
def test_ranks_split_each_global_batch_like_distributed_batch_sampler(n, batch, ranks):
    samplers = [EpochBatchSampler(n, batch, seed=7, num_replicas=ranks, rank=r) for r in range(ranks)]
    for s in samplers:
        s.set_epoch(2)
    per_rank = [list(s) for s in samplers]
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == len(samplers[0])  # same step count
    order = epoch_permutation(n, 7, 2).tolist()
    taken = [i for step in zip(*per_rank) for b in step for _, i in b]
    padded = order + order[:len(taken) - n]  # padding repeats the start, as Paddle's does
    assert sorted(taken) == sorted(padded) and set(taken) == set(range(n))
    if n % (batch * ranks) == 0:  # full global batches: step i is the permutation's i-th slice
        assert taken == order
    reference = paddle.io.DistributedBatchSampler(list(range(n)), batch, num_replicas=ranks, rank=1)
    assert len(samplers[1]) == len(reference)


def test_each_sample_has_its_own_augmentation_stream():
    from ppadapt.data import ArrayDataset, TrainTransform

    images = np.random.default_rng(0).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    data = ArrayDataset(images, np.arange(20) % 3, TrainTransform(16, (0.5,) * 3, (0.5,) * 3))
    seeded = SeededDataset(data, seed=1)
    first = seeded[(3, 10)][0]
    np.random.seed(123)  # the global generator plays no part, nor do the samples drawn before
    seeded[(3, 11)]
    assert np.array_equal(seeded[(3, 10)][0], first)
    assert not np.array_equal(seeded[(4, 10)][0], first)  # another epoch, another draw
    assert not np.array_equal(SeededDataset(data, seed=2)[(3, 10)][0], first)  # another seed


# -- two processes -----------------------------------------------------------------------

def launch(tool, log_dir, *args, dump=None):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    env["OMP_NUM_THREADS"] = "1"  # two processes on two cores
    # tests/drive.py runs the tool with a callback (the public callbacks= seam) that saves every rank's weights
    script = [str(REPO / "tests" / "drive.py"), "--dump-dir", str(dump), tool] if dump else \
        [str(REPO / "ppadapt" / f"{tool}.py")]
    return subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                           "--log_dir", str(log_dir), *script, *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def same(a: Path, b: Path) -> bool:
    x, y = paddle.load(str(a)), paddle.load(str(b))
    return x.keys() == y.keys() and all(np.array_equal(x[k].numpy(), y[k].numpy()) for k in x)


def test_two_processes_train_and_transfer_in_sync_and_only_rank_0_writes(tmp_path):
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", "cifar10", train_per_class=6,
                                  test_per_class=2)
    out, dump = tmp_path / "out", tmp_path / "dump"
    dump.mkdir()
    pre = launch("train", tmp_path / "log1", "--pretrain", "cifar10", "--data-file", archive, "--output", out,
                 *TINY, dump=dump)
    assert pre.returncode == 0, pre.stdout[-3000:] + pre.stderr[-3000:]
    run = out / "tutorial_pretrain_cifar10"
    assert same(dump / "rank0.pdparams", dump / "rank1.pdparams")  # weights in sync
    assert same(dump / "rank0.pdparams", run / "final.pdparams")
    assert sorted(p.name for p in run.iterdir()) == ["best.pdparams", "final.pdparams", "resume.pdckpt",
                                                     "run.json", "vdl"]
    assert len(list((run / "vdl").iterdir())) == 1  # one VisualDL writer: rank 0's
    rank0, rank1 = ((tmp_path / "log1" / f"workerlog.{r}").read_text() for r in (0, 1))
    assert "best eval:  top-1" in rank0 and "trainable parameters" in rank0
    assert "best eval" not in rank1 and "trainable parameters" not in rank1 and "Epoch" not in rank1
    state = paddle.load(str(run / "resume.pdckpt"), return_numpy=True)
    assert state["nranks"] == 2 and state["steps_per_epoch"] == 4  # 60 images: 30 per rank, batches of 8

    dump2 = tmp_path / "dump2"
    dump2.mkdir()
    tr = launch("transfer", tmp_path / "log2", "--freeze", "--data-file", archive, "--output", out,
                "--pretrained", run / "final.pdparams", *TINY, dump=dump2)
    assert tr.returncode == 0, tr.stdout[-3000:] + tr.stderr[-3000:]
    frozen = out / "tutorial_transfer_cifar10_frozen"
    assert same(dump2 / "rank0.pdparams", dump2 / "rank1.pdparams")
    assert (frozen / "adapter" / "adapter_config.json").is_file() and len(list((frozen / "vdl").iterdir())) == 1
    pre_w, tuned = paddle.load(str(run / "final.pdparams")), paddle.load(str(frozen / "final.pdparams"))
    backbone = [k for k in pre_w if ".adaptmlp." not in k and not k.startswith("head.")]
    assert all(np.array_equal(pre_w[k].numpy(), tuned[k].numpy()) for k in backbone)  # frozen stays frozen
