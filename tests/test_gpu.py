"""On a CUDA device: the engine runs there and agrees with the CPU. Skipped without CUDA. Imports robrep alone
(the GPU machines we measure on have torch but no Ray or FFCV)."""

import pytest
import torch

from robrep.models import create_model
from robrep.objectives import inversion
from robrep.pgd import pgd

pytestmark = pytest.mark.gpu


def test_pgd_on_cuda_matches_the_cpu():
    torch.manual_seed(0)
    model = create_model("cifar_resnet18", 10, [0.5] * 3, [0.25] * 3).eval()
    x0, target = torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32)
    results = {}
    for device in ("cpu", "cuda"):
        m = model.to(device)
        with torch.no_grad():
            target_rep = m.representation(target.to(device))
        result = pgd(inversion(m, target_rep), x0.to(device), eps=1000.0, step_size=0.1, steps=10)
        assert result.x.device.type == device
        results[device] = result.loss.cpu()
    torch.testing.assert_close(results["cuda"], results["cpu"], rtol=1e-3, atol=1e-4)

