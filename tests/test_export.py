"""export.py: BatchNorm folding keeps every model's logits, and the ONNX model agrees with PyTorch in onnxruntime."""
import numpy as np
import pytest
import torch

import export
import hubconf
import transforms
from config import MODELS, UserError


def random_statistics(net):
    """Give every BatchNorm statistics and an affine map far from the identity, so a wrong fold shows."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


@pytest.mark.parametrize("name", MODELS)
def test_the_deployable_net_takes_uint8_images_and_gives_the_same_logits(name):
    torch.manual_seed(0)
    net = random_statistics(MODELS[name]())
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = net(transforms.test_transforms()(images))
        deployable = export.Deployable(net)
        got = deployable(torch.from_numpy(images))
    assert (got - expected).abs().max() < 1e-5
    if name in ("tiniest", "xvel"):  # LayerNorm only: nothing to fold
        return
    convs_then_bn = [s for s in net.modules() if isinstance(s, torch.nn.Sequential) and
                     any(isinstance(a, torch.nn.Conv2d) and isinstance(b, torch.nn.BatchNorm2d)
                         for a, b in zip(list(s), list(s)[1:]))]
    left = sum(isinstance(m, torch.nn.BatchNorm2d) for m in deployable.modules())
    assert convs_then_bn and left < sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    if name in ("fast", "fastdilated", "seed"):  # every BatchNorm of these follows a conv
        assert left == 0
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is untouched


def test_the_onnx_model_of_the_shipped_weights_agrees_with_pytorch(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "model.onnx"
    export.main([f"--out={out}"])
    assert "checked with onnxruntime" in capsys.readouterr().out
    model = onnx.load(str(out))
    assert "BatchNormalization" not in {node.op_type for node in model.graph.node}
    assert {p.key: p.value for p in model.metadata_props}["classes"] == ",".join(hubconf.CLASSES)
    net = hubconf.fast_net(pretrained=True)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 5):  # any batch size
        images = np.random.default_rng(n).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        with torch.no_grad():
            expected = net(hubconf.preprocess()(images)).numpy()
        assert np.abs(session.run(["logits"], {"images": images})[0] - expected).max() < 1e-4
    with pytest.raises(UserError, match="exists") as e:  # nothing already written is replaced unasked
        export.main([f"--out={out}"])
    assert "\n" not in str(e.value)


def test_missing_exporter_packages_are_one_line_and_nothing_is_written(tmp_path, monkeypatch):
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else find_spec(name, *a))
    with pytest.raises(UserError, match="pip install onnx onnxscript") as e:
        export.main([f"--out={tmp_path / 'model.onnx'}"])
    assert "\n" not in str(e.value) and not list(tmp_path.iterdir())
