import pytest
import torch

from synthetic import make_model, make_model_tensors


@pytest.fixture
def model_tensors():
    return make_model_tensors()


@pytest.fixture
def model():
    return make_model()


@pytest.fixture
def model_file(tmp_path, model):
    path = tmp_path / "synthetic.safetensors"
    model.save(path)
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
