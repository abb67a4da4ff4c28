"""The supported Paddle range (>= 3.2): below it, ``import ppadapt`` and every tool stop with one
line naming the found and needed versions and the pip command (issue 14)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ppadapt.utils.paddle_version import (MIN_PADDLE, PaddleVersionError, check_paddle_version,
                                          paddle_version_problem, parse_version)

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("text, expected", [("3.3.1", (3, 3, 1)), ("2.6.2", (2, 6, 2)), ("3.0.0rc1", (3, 0, 0)),
                                            ("3.1.0.post112", (3, 1, 0)), ("develop", ())])
def test_parse_version(text, expected):
    assert parse_version(text) == expected


def test_the_range():
    assert MIN_PADDLE == (3, 2)
    for ok in ("3.2.0", "3.2.0b2", "3.3.1", "4.0.0", "0.0.0", "develop"):  # 0.0.0: a source build
        assert paddle_version_problem(ok) is None, ok
    assert paddle_version_problem("2.6.2") == ('ppadapt needs PaddlePaddle >= 3.2 (tested with 3.3.1), found 2.6.2: '
                                               'pip install -U "paddlepaddle>=3.2", then restart Python')
    assert 'pip install -U "paddlepaddle-gpu>=3.2" from Paddle\'s CUDA package index' in \
        paddle_version_problem("2.5.0", gpu_build=True)
    with pytest.raises(PaddleVersionError) as exc:
        check_paddle_version("2.6.2", gpu_build=False)
    assert isinstance(exc.value, ImportError) and "\n" not in str(exc.value)
    check_paddle_version()  # the Paddle these tests run on is supported


def _run(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter that imports Paddle first, as a user's notebook might (without
    our thread settings in the environment, so Paddle has no thread warning to print)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env=env)


def test_import_ppadapt_fails_on_an_older_paddle():
    proc = _run(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import paddle
        paddle.__version__ = "2.6.2"  # what an older AI Studio image has
        try:
            import ppadapt
        except ImportError as exc:
            print(type(exc).__name__, exc)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines() == [
        'PaddleVersionError ppadapt needs PaddlePaddle >= 3.2 (tested with 3.3.1), found 2.6.2: pip install -U '
        '"paddlepaddle>=3.2", then restart Python']


def test_a_tool_says_it_in_one_line():
    proc = _run(f"""
        import runpy, sys
        import paddle
        paddle.__version__ = "2.6.2"
        sys.argv = ["ppadapt/train.py", "--help"]
        runpy.run_path({str(REPO / 'ppadapt' / 'train.py')!r}, run_name="__main__")
    """)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "ccache" not in line
             and "warnings.warn" not in line]
    assert proc.returncode == 2 and proc.stdout == ""
    assert lines == ['error: ppadapt needs PaddlePaddle >= 3.2 (tested with 3.3.1), found 2.6.2: '
                     'pip install -U "paddlepaddle>=3.2", then restart Python']


def test_ci_runs_the_suite_on_the_oldest_supported_paddle():
    """.ci/run's second pass is on MIN_PADDLE, so the declared floor is the tested one."""
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    oldest = re.search(r"^OLDEST_PADDLE=(\S+)$", ci, re.M)
    assert oldest and parse_version(oldest.group(1))[:2] == MIN_PADDLE
    assert ".venv-oldest/bin/python -m pytest" in ci
