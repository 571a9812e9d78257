"""Writes ONNX files with torch.onnx.export's default exporter since PyTorch 2.9 (dynamo=True).

Why: that is how users' ONNX files look now (opset 20, onnxscript-optimized names, Gelu and
LayerNormalization as ops, weights in an external `.onnx.data` file). It needs onnxscript, which
edgepipe does not depend on, so the files are committed and this script documents how they were made:

    pip install onnxscript && python tests/dynamo_exported/make_files.py
"""

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import fixture_models  # noqa: E402

MODELS = {
    "cnn": (fixture_models.build_small_cnn(), (1, 3, 32, 32)),
    "attention": (torch.nn.Sequential(fixture_models.AttentionBlock()).eval(), (1, 17, 32)),
}

# token models: int64 ids and attention mask (tests/test_token_models.py)
TOKEN_MODELS = {"token_classifier": fixture_models.build_token_classifier()}

if __name__ == "__main__":
    for name, (module, shape) in MODELS.items():
        if not (HERE / f"{name}.onnx").exists():
            torch.onnx.export(module, (torch.zeros(shape),), str(HERE / f"{name}.onnx"), dynamo=True, input_names=["x"])
    for name, module in TOKEN_MODELS.items():
        feed = {k: torch.from_numpy(v) for k, v in fixture_models.token_batch(1, 0).items()}
        torch.onnx.export(module, (feed["input_ids"], feed["attention_mask"]), str(HERE / f"{name}.onnx"),
                          dynamo=True, input_names=list(feed), output_names=["logits"])
