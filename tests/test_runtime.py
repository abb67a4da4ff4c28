"""CPU settings: threads shared among launched processes, user values kept."""
from ppadapt.utils import runtime


def test_threads_are_shared_among_launched_processes(monkeypatch):
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("PADDLE_LOCAL_SIZE", raising=False)
    assert runtime.cpu_defaults()["OMP_NUM_THREADS"] == "8"
    monkeypatch.setenv("PADDLE_LOCAL_SIZE", "2")
    assert runtime.cpu_defaults()["OMP_NUM_THREADS"] == "4"
    monkeypatch.setenv("PADDLE_LOCAL_SIZE", "16")
    assert runtime.cpu_defaults()["OMP_NUM_THREADS"] == "1"


def test_post_import_tuning_keeps_the_users_stride_setting(monkeypatch):
    import paddle

    monkeypatch.setenv("FLAGS_use_stride_kernel", "1")
    paddle.set_flags({"FLAGS_use_stride_kernel": True})
    try:
        assert "FLAGS_use_stride_kernel" not in runtime.tune_cpu_runtime()
        assert paddle.get_flags(["FLAGS_use_stride_kernel"])["FLAGS_use_stride_kernel"] is True
    finally:
        paddle.set_flags({"FLAGS_use_stride_kernel": False})
