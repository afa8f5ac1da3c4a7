"""Codec specs: every registered name builds and is tested, errors name what is allowed, transport/codecs imports no
runtime."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

from transport.codecs import CODECS, WRAPPERS, Compose, EControl, QSGDCodec, TopKCodec, make_codec

TESTS = Path(__file__).parents[1]
CODEC_SOURCES = sorted((TESTS.parent / "transport" / "codecs").glob("*.py"))
FORBIDDEN_IMPORTS = {"fl", "ray", "strategies", "simulations"}


@pytest.mark.parametrize("spec, name", [
    ("identity", "identity"), ("fp16", "fp16"), ("bf16", "bf16"), ("qsgd:levels=127", "qsgd"), ("int8", "int8"),
    ("topk:ratio=0.01", "topk"), ("randk:ratio=0.01", "randk"), ("sign", "sign"), ("topk:ratio=0.01+qsgd", "topk+qsgd"),
    ("topk:ratio=0.01+int8", "topk+int8"), ("ef(sign)", "ef(sign)"), ("ef21(topk:k=3)", "ef21(topk)"),
    ("econtrol:eta=0.05(randk:k=3+fp16)", "econtrol(randk+fp16)"), (" topk : ratio = 0.1 ", "topk"),
])
def test_specs_build_the_named_codec(spec: str, name: str) -> None:
    # Execute
    codec = make_codec(spec)
    payload, _ = codec.encode(torch.ones(50), {}, torch.Generator().manual_seed(0))
    decoded, _ = codec.decode(payload, {})
    # Assert
    assert codec.name == name and payload.codec == name and decoded.shape == (50,)


def test_spec_parameters_reach_the_codec() -> None:
    qsgd = make_codec("qsgd:levels=15,bucket=0")
    composed = make_codec("topk:k=7+int8")
    wrapped = make_codec("econtrol:eta=0.25(topk:ratio=0.5)", "down.")
    assert isinstance(qsgd, QSGDCodec) and (qsgd.levels, qsgd.bucket, qsgd.wire_dtype) == (15, 0, torch.int8)
    assert isinstance(composed, Compose) and composed.sparsifier.k == 7 and composed.values.levels == 127
    assert isinstance(wrapped, EControl) and wrapped.eta == 0.25 and wrapped.namespace == "down.econtrol"
    assert isinstance(wrapped.inner, TopKCodec) and wrapped.inner.ratio == 0.5


@pytest.mark.parametrize("spec, message", [
    ("gzip", r"unknown codec 'gzip'; allowed: bf16, fp16, identity, int8, qsgd, randk, sign, topk"),
    ("qsgd:level=3", r"unknown parameter 'level' for codec 'qsgd'; allowed: levels, bucket"),
    ("sign:scale=1", r"unknown parameter 'scale' for codec 'sign'; allowed: \(none\)"),
    ("topk:ratio", r"parameter 'ratio' of codec 'topk' needs a value"),
    ("topk:ratio=abc", r"parameter 'ratio' must be a number or true/false, got 'abc'"),
    ("qsgd+int8", r"only a sparsifier \(topk, randk\) may stand before '\+'"),
    ("topk+int8+fp16", r"at most two codecs"),
    ("ef22(sign)", r"unknown wrapper 'ef22'; allowed: econtrol, ef, ef21"),
    ("econtrol:beta=1(sign)", r"unknown parameter 'beta' for wrapper 'econtrol'; allowed: eta"),
    ("qsgd:levels=300.5", r"levels must be an integer in \[1, 32767\]"),
    ("topk:ratio=2", r"ratio must be in \(0, 1\]"),
    ("topk:ratio=0.1,k=3", r"give one of ratio or k, not both"),
])
def test_bad_specs_raise_value_errors_naming_what_is_allowed(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_codec(spec)


def test_every_registered_codec_is_guarded_by_a_test() -> None:
    # Prepare: the text of the other codec test files
    texts = [p.read_text() for p in TESTS.rglob("test_codecs*.py") if p.name != Path(__file__).name]
    # Execute: names that never appear in a spec string there ("name", "name:..", "name(..", "+name", ...)
    untested = [name for name in [*CODECS, *WRAPPERS]
                if not any(re.search(rf"[\"'+(]{name}[\"':(+)]", text) for text in texts)]
    # Assert
    assert untested == []


@pytest.mark.parametrize("path", CODEC_SOURCES, ids=lambda p: p.name)
def test_codecs_import_no_runtime(path: Path) -> None:
    # Prepare
    tree = ast.parse(path.read_text())
    # Execute
    nodes = list(ast.walk(tree))
    imported = {alias.name.split(".")[0] for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in nodes if isinstance(node, ast.ImportFrom) and node.module}
    # Assert
    assert imported & FORBIDDEN_IMPORTS == set()
