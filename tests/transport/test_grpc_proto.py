"""The committed generated code is exactly what grpcio-tools makes from fl.proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("fl_pb2.py", "fl_pb2_grpc.py")


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}", f"--python_out={tmp_path}",
               f"--grpc_python_out={tmp_path}", str(ROOT / "transport/proto/fl.proto")]

    subprocess.run(command, check=True, capture_output=True, timeout=60)

    for name in GENERATED:
        fresh = (tmp_path / "transport/proto" / name).read_text()
        assert fresh == (ROOT / "transport/proto" / name).read_text(), f"{name} is stale: regenerate it"
