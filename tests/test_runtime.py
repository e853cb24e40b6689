"""trainlab.training.runtime: glibc malloc thresholds through mallopt, a no-op elsewhere."""

import subprocess
import sys

import pytest

from trainlab.training import runtime


def test_not_glibc_is_a_no_op_with_a_reason(monkeypatch):
    monkeypatch.setattr(runtime, "_applied", None)
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("musl", "1.2"))
    monkeypatch.setattr(runtime.sys, "platform", "linux")
    r = runtime.apply_cpu_tuning()
    assert r["applied"] is False and "not glibc" in r["reason"] and r["settings"] == {}
    monkeypatch.setattr(runtime, "_applied", None)
    monkeypatch.setattr(runtime.sys, "platform", "darwin")
    assert "darwin" in runtime.apply_cpu_tuning()["reason"]


@pytest.mark.skipif(not sys.platform.startswith("linux") or runtime.platform.libc_ver()[0] != "glibc",
                    reason="glibc only")
def test_on_glibc_the_thresholds_are_set_once():
    # in a child process: mallopt changes the whole process's allocator
    code = ("from trainlab.training import runtime\n"
            "r = runtime.apply_cpu_tuning()\n"
            "assert r['applied'] and not r['failed'], r\n"
            "assert r['settings']['M_MMAP_THRESHOLD'] == 32 * 2**20\n"
            "assert r['settings']['M_MMAP_MAX'] == 0 and r['settings']['M_TRIM_THRESHOLD'] == 2**31 - 1\n"
            "assert runtime.apply_cpu_tuning() is r and runtime.malloc_tuning_state() is r\n"
            "import torch; x = torch.ones(4096, 4096); assert float(x.sum()) == 4096 * 4096\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_values_are_clamped_to_what_glibc_accepts(monkeypatch):
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(runtime, "_applied", None)
    monkeypatch.setattr(runtime, "_glibc", lambda: (FakeLibc(), "glibc test"))
    r = runtime.apply_cpu_tuning(mmap_threshold=2**40, trim_threshold=2**40, top_pad=2**40, disable_mmap=False)
    assert dict(calls) == {runtime.M_MMAP_THRESHOLD: runtime.MAX_MMAP_THRESHOLD,
                           runtime.M_TRIM_THRESHOLD: 2**31 - 1, runtime.M_TOP_PAD: 2**31 - 1}
    # the report says what was set, by name, as clamped (M_MMAP_MAX left alone: disable_mmap=False)
    assert r["settings"] == {"M_MMAP_THRESHOLD": runtime.MAX_MMAP_THRESHOLD, "M_TRIM_THRESHOLD": 2**31 - 1,
                             "M_TOP_PAD": 2**31 - 1}
    assert r["applied"] is True and r["failed"] == []
    assert runtime.malloc_tuning_state() is r
    monkeypatch.setattr(runtime, "_applied", None)


def test_a_setting_glibc_refuses_is_reported_and_the_rest_still_apply(monkeypatch):
    class PickyLibc:
        def mallopt(self, param, value):
            return 0 if param == runtime.M_TOP_PAD else 1  # mallopt returns 0 on failure

    monkeypatch.setattr(runtime, "_applied", None)
    monkeypatch.setattr(runtime, "_glibc", lambda: (PickyLibc(), "glibc test"))
    r = runtime.apply_cpu_tuning()
    assert r["failed"] == ["M_TOP_PAD"] and "M_TOP_PAD" not in r["settings"]
    assert r["settings"]["M_MMAP_MAX"] == 0 and r["applied"] is True

    class RefusingLibc:
        def mallopt(self, param, value):
            return 0

    monkeypatch.setattr(runtime, "_glibc", lambda: (RefusingLibc(), "glibc test"))
    r = runtime.apply_cpu_tuning(force=True)
    assert r["applied"] is False and r["settings"] == {}
    assert sorted(r["failed"]) == ["M_MMAP_MAX", "M_MMAP_THRESHOLD", "M_TOP_PAD", "M_TRIM_THRESHOLD"]
    monkeypatch.setattr(runtime, "_applied", None)
