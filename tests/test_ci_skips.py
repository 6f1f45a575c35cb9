"""In CI (the environment variable CI set), a test that skips for a missing dependency or data
set fails instead; a skip bound to the machine (no GPU, not Linux) stays a skip. Checked on a
small test file run by pytest's own pytester, with the hook of tests/conftest.py."""

from __future__ import annotations

import pytest

pytest_plugins = ("pytester",)

TESTS = '''
import pytest

def test_missing_extra():
    pytest.importorskip("no_such_module_anywhere", reason="needs the nothing extra")

def test_missing_data():
    pytest.skip("SST-2 data is not at /nowhere")

@pytest.mark.skipif(True, reason="needs CUDA")
def test_gpu_only():
    pass

@pytest.mark.xfail(reason="a known bug")
def test_known_bug():
    assert False

def test_fine():
    assert True
'''


@pytest.fixture()
def probe(pytester):
    pytester.makeconftest("from tests.conftest import pytest_runtest_makereport  # noqa: F401\n")
    pytester.makepyfile(test_probe=TESTS)
    return pytester


def test_outside_ci_a_missing_dependency_is_a_skip(probe, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    result = probe.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)


@pytest.mark.parametrize("value", ["1", "true"])
def test_in_ci_a_missing_dependency_or_data_set_fails(probe, monkeypatch, value):
    monkeypatch.setenv("CI", value)
    result = probe.runpytest("-p", "no:cacheprovider", "-rfs")
    result.assert_outcomes(passed=1, failed=2, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines([
        "*FAILED*test_missing_extra*skipped in CI, where this test must run*nothing extra*",
        "*FAILED*test_missing_data*skipped in CI*SST-2 data is not at /nowhere*",
    ])
    result.stdout.fnmatch_lines(["SKIPPED*test_probe.py*needs CUDA"])  # machine-bound: a skip


def test_ci_0_is_not_ci(probe, monkeypatch):
    monkeypatch.setenv("CI", "0")
    probe.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1, skipped=3, xfailed=1)
