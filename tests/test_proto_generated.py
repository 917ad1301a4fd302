"""The committed betterproto code matches proto/ (regenerate with scripts/gen_proto.py)."""

from __future__ import annotations

import subprocess
import sys

from tests.plugins.transport import ROOT


def test_committed_generated_code_matches_proto() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_generated_service_has_the_contract_names() -> None:
    from skytorch.transport._proto.skytorch.v1 import TensorServiceBase, TensorServiceStub

    for name in ("send_tensors", "receive_tensors", "stream_tensors"):
        assert hasattr(TensorServiceStub, name) and hasattr(TensorServiceBase, name)
    paths = set(TensorServiceBase().__mapping__())  # type: ignore[abstract]
    assert paths == {f"/skytorch.v1.TensorService/{m}" for m in ("SendTensors", "ReceiveTensors", "StreamTensors")}
