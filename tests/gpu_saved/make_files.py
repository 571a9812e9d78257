"""Writes the PyTorch files a user brings from a GPU training machine (run once on a CUDA machine).

Why: a checkpoint, TorchScript file or torch.export program saved from CUDA tensors, or one
whose graph creates tensors on `x.device`, cannot be run on a CPU-only build host unless the
loader maps it to the CPU. A file made on a CPU would carry neither, so this script ran on a real
GPU and its outputs are committed beside it, with the GPU's own FP32 outputs (TF32 off) as the
independent reference (`reference.npz`, which also records the device and torch version).

    python3 tests/gpu_saved/make_files.py --out tests/gpu_saved
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fixture_models  # noqa: E402

SHAPE = (1, 3, 16, 16)
MODELS = {"small_cnn": fixture_models.build_small_cnn, "position_cnn": fixture_models.build_position_bias_cnn}


def trained(factory, device: str) -> torch.nn.Module:
    """The factory's model with weights and BatchNorm statistics that are not the initial ones."""
    net = factory()
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)
        net.bn.running_var.abs_().add_(0.5)
    return net.to(device).eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x = torch.from_numpy(np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)).to(args.device)
    facts = {"device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
             "torch": torch.__version__, "tf32": False}
    reference = {"x": x.cpu().numpy(), "made_on": np.array(json.dumps(facts))}
    with torch.no_grad():
        for name, factory in MODELS.items():
            net = trained(factory, args.device)
            reference[name] = net(x).cpu().numpy()
            torch.jit.save(torch.jit.trace(net, (x,)), str(out / f"{name}_traced.pt"))
            torch.export.save(torch.export.export(net, (x,)), str(out / f"{name}.pt2"))
        state = trained(fixture_models.build_small_cnn, args.device).state_dict()
        torch.save(state, out / "small_cnn_state_dict.pt")
        torch.save({"epoch": 12, "state_dict": state}, out / "small_cnn_checkpoint.pt")
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()},
                   out / "small_cnn_state_dict_fp16.pt")
    np.savez(out / "reference.npz", **reference)
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
