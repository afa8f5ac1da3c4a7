"""ParamSpec and FlatModule: exact round trips and gradients that land in the flat buffer."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fl.models import cnn
from fl.params import FlatModule, ParamSpec


def random_module(shapes: list[tuple[int, ...]], buffer_shapes: list[tuple[int, ...]], dtype: torch.dtype) -> nn.Module:
    module = nn.Module()
    for i, shape in enumerate(shapes):
        module.register_parameter(f"p{i}", nn.Parameter(torch.randn(shape, dtype=dtype)))
    for i, shape in enumerate(buffer_shapes):
        module.register_buffer(f"b{i}", torch.randint(0, 1000, shape))
    return module


shape_lists = st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None)
@given(shapes=shape_lists, buffers=shape_lists, dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]))
def test_flatten_then_load_round_trips_exactly(shapes, buffers, dtype):
    source, target = random_module(shapes, buffers, dtype), random_module(shapes, buffers, dtype)
    spec = ParamSpec.from_module(source)

    spec.load(target, spec.flatten(source))

    for (name, a), (_, b) in zip(list(source.named_parameters()) + list(source.named_buffers()),
                                 list(target.named_parameters()) + list(target.named_buffers())):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert spec.num_params == sum(t.numel() for t in source.state_dict().values())


def test_trainable_parameters_come_first_and_buffers_are_included():
    model = cnn(64, 10)

    spec = ParamSpec.from_module(model)

    trainable = [e for e in spec.entries if e.trainable]
    assert spec.entries[: len(trainable)] == tuple(trainable)
    assert spec.num_trainable == sum(p.numel() for p in model.parameters())
    assert any("running_mean" in e.name for e in spec.entries[len(trainable):])


def test_flat_module_gradients_land_in_the_flat_buffer_every_step():
    torch.manual_seed(0)
    model = cnn(64, 10)
    reference = cnn(64, 10)
    reference.load_state_dict(model.state_dict())
    flat = FlatModule(model, ParamSpec.from_module(model))
    x = torch.randn(8, 64)

    for _ in range(2):
        flat.grad.zero_()
        model(x).square().mean().backward()
    reference(x).square().mean().backward()

    expected = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])
    assert torch.allclose(flat.grad, expected, atol=1e-6)  # the second pass still wrote into the buffer
