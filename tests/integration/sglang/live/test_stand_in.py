"""The sgl-kernel stand-in is for the test servers' path only, never the package's."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from tests.integration.sglang.live.harness import ROOT, STUB_PATH


def test_the_sgl_kernel_stand_in_is_not_importable_from_the_package():
    spec = importlib.util.find_spec("sgl_kernel")
    assert spec is None or not str(spec.origin).startswith(str(STUB_PATH))
    assert not (ROOT / "moe_spec" / "sgl_kernel").exists()
    probe = "import importlib.util as u; s = u.find_spec('sgl_kernel'); print(s and s.origin)"
    from_package = subprocess.run(
        [sys.executable, "-c", probe], cwd="/", capture_output=True, text=True, check=True
    )
    assert str(STUB_PATH) not in from_package.stdout
