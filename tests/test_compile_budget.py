"""Each model compiled by ``training.performance.compile_model`` has its own recompile budget: the training,
evaluation and EMA models of a run (one ``forward`` code object) and a size schedule's shapes must not share
dynamo's 8 graphs, past which the rest would run eager without a word."""

import pytest
import torch
from torch import nn

from training import performance
from training.performance import compile_model


class Tiny(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, 2)

    def forward(self, x):
        return self.linear(x).relu()


class CountingBackend:
    """A backend that runs the captured graph as it is, counting the graphs compiled and the calls of them."""

    def __init__(self) -> None:
        self.graphs = self.calls = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1

        def run(*args):
            self.calls += 1
            return graph_module.forward(*args)
        return run


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=8):  # (the fallback widens it)
        yield
    torch._dynamo.reset()


def compile_three_models_on_four_shapes():
    """3 models of one class (different widths: their graphs differ) x 4 batch sizes: 12 graphs."""
    backends = [CountingBackend() for _ in range(3)]
    models = [compile_model(Tiny(width), backend=backend) for width, backend in zip((3, 4, 5), backends)]
    for _ in range(2):  # the second pass must reuse the graphs of the first
        for width, model in zip((3, 4, 5), models):
            for batch in (1, 2, 3, 4):
                model(torch.randn(batch, width))
    return backends


def test_every_model_and_shape_gets_its_own_graph(fresh_dynamo):
    backends = compile_three_models_on_four_shapes()
    assert [b.graphs for b in backends] == [4, 4, 4]
    assert [b.calls for b in backends] == [8, 8, 8]  # no call ran eager


def test_without_isolated_budgets_the_shared_budget_grows(fresh_dynamo, monkeypatch):
    monkeypatch.setattr(performance, "_isolates_recompiles", lambda: False)
    backends = compile_three_models_on_four_shapes()
    assert [b.graphs for b in backends] == [4, 4, 4]
    assert [b.calls for b in backends] == [8, 8, 8]
    assert torch._dynamo.config.recompile_limit == 8 + 3 * 8
