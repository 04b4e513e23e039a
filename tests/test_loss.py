import torch

from gsvc.loss import clamped_mse


def test_fused_loss_matches_torch_in_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    pred = (torch.rand(13, 17, 3, generator=g) * 1.6 - 0.3).requires_grad_()
    pred.data[0, 0, 0] = 1.0  # clamp boundary: torch passes the gradient there
    pred.data[0, 0, 1] = 0.0
    target = torch.rand(13, 17, 3, generator=g)
    ref = pred.detach().clone().requires_grad_()
    expected = torch.mean((ref.clamp(0, 1) - target) ** 2)
    (expected * 3).backward()
    got = clamped_mse(pred, target)
    (got * 3).backward()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(pred.grad, ref.grad)
