import pytest
import torch

from segnet.evaluation.inference import EvaluateConfig
from segnet.params import build
from segnet.devices import select_device


@pytest.mark.parametrize("values, message", [
    ({"batch_size": 0}, "evaluate.batch_size: must be an integer >= 1, got 0"),
    ({"samples": -1}, "evaluate.samples: must be an integer >= 1, got -1"),
    ({"batch_size": 1.5}, "evaluate.batch_size: must be an integer, got 1.5"),
    ({"device": 0}, "evaluate.device: must be a string, got 0"),
    ({"bach_size": 8}, r"evaluate: unknown key\(s\) \['bach_size'\]"),
])
def test_bad_evaluate_settings_are_refused_by_name(values, message):
    with pytest.raises(ValueError, match=message):
        build(EvaluateConfig, "evaluate", values)


def test_a_device_error_names_the_setting_it_came_from():
    with pytest.raises(ValueError, match="evaluate.device: 'gpu' is not a device"):
        select_device("gpu", setting="evaluate.device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="evaluate.device: 'cuda' requested but that CUDA device is not available"):
            select_device("cuda", setting="evaluate.device")
    assert select_device("cpu", setting="evaluate.device") == torch.device("cpu")
    for name in ("mps", "xpu", "meta"):  # devices torch names but this project does not run on
        with pytest.raises(ValueError, match=f"^evaluate.device: '{name}' is not a device this project runs on"):
            select_device(name, setting="evaluate.device")
