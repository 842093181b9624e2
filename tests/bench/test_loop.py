"""peftds.bench.loop: the shared training step."""

from types import SimpleNamespace

import torch

from peftds.bench.loop import make_optimizer, train_step, trainable


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)
        self.frozen = torch.nn.Linear(4, 1).requires_grad_(False)

    def forward(self, x, y):
        return SimpleNamespace(loss=((self.lin(x) + self.frozen(x) - y) ** 2).mean())


def test_train_step_lowers_the_loss():
    torch.manual_seed(0)
    model = Toy()
    assert len(trainable(model)) == 2
    opt = make_optimizer(trainable(model), 0.05, torch.device("cpu"))
    batch = {"x": torch.randn(16, 4), "y": torch.randn(16, 1)}
    losses = [float(train_step(model, opt, batch)) for _ in range(30)]
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in model.parameters())  # zeroed after each step
