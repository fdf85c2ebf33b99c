"""Small helpers shared by the tests."""

import torch


def randomize_bn_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Give every BN random affine parameters and running statistics, so that eval-mode BN is not
    the identity and a misplaced or skipped layer changes the output."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model
