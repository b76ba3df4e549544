import pytest
import torch


@pytest.fixture
def float64():
    """Run a test in float64 (the precision the ground-truth comparisons need)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
