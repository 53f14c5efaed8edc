import pytest
import torch

from segnet.devices import select_device
from segnet.evaluation.inference import EvaluateConfig
from segnet.params import build
from tests.helpers import PARAMS


@pytest.mark.parametrize(
    "values, message",
    [
        ({"batch_size": 0}, "evaluate.batch_size: must be an integer >= 1, got 0"),
        ({"samples": -1}, "evaluate.samples: must be an integer >= 1, got -1"),
        ({"batch_size": 1.5}, "evaluate.batch_size: must be an integer, got 1.5"),
        ({"device": 0}, "evaluate.device: must be a string, got 0"),
        ({"bach_size": 8}, r"evaluate: unknown key\(s\) \['bach_size'\]"),
    ],
)
def test_bad_evaluate_settings_are_refused_by_name(values, message):
    with pytest.raises(ValueError, match=message):
        build(
            EvaluateConfig, "evaluate", {**{k: v for k, v in PARAMS["evaluate"].items() if k != "bootstrap"}, **values}
        )


def test_a_device_error_names_the_setting_it_came_from():
    evaluate = {k: v for k, v in PARAMS["evaluate"].items() if k != "bootstrap"}
    with pytest.raises(ValueError, match="^params.yaml evaluate.device: 'gpu' is not a device"):
        build(EvaluateConfig, "evaluate", {**evaluate, "device": "gpu"})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="^device: 'cuda' requested but that CUDA device is not available"):
            select_device("cuda")
    assert select_device("cpu") == torch.device("cpu")
    for name in ("mps", "xpu", "meta"):  # devices torch names but this project does not run on
        with pytest.raises(ValueError, match=f"^device: '{name}' is not a device this project runs on"):
            select_device(name)
