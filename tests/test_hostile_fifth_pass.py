"""Fifth hostile-input pass: findings that need more than a bad-input table row."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading

import pytest

from tests import test_hostile_second_pass

arm_bundle = test_hostile_second_pass.arm_bundle  # the same module-scoped arm-cpu bundle fixture


def _run_py(bundle, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(bundle / "run.py"), "--iterations", "2", "--warmup", "0", *args],
                          capture_output=True, text=True, timeout=300)


def test_run_py_writes_into_a_special_out_file_never_over_it(arm_bundle, tmp_path):
    """`run.py --out /dev/null` as root renamed results.json over the device node: /dev/null became a
    regular file for every process on the machine. A FIFO stands in for the device here: it must
    stay a FIFO and its reader must get the results."""
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    result = _run_py(arm_bundle, "--out", str(fifo))
    if reader.is_alive():  # the fixed run.py opened the FIFO; the old one never did: unblock the reader
        with open(fifo, "w"):
            pass
    reader.join(timeout=30)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert received and received[0].lstrip().startswith("{") and '"latency_ms"' in received[0]


def test_run_py_out_naming_a_folder_is_refused_before_the_run(arm_bundle, tmp_path):
    """`--out somefolder` ran the whole benchmark, then os.replace onto the folder was a traceback."""
    (tmp_path / "results").mkdir()
    result = _run_py(arm_bundle, "--out", str(tmp_path / "results"))
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --out ")
    assert "is a folder; name the results file" in result.stderr
    assert os.listdir(tmp_path / "results") == []


def test_build_engine_refuses_a_special_output_before_building(tmp_path):
    """The TensorRT kit's build_engine.py renamed the engine (and the timing cache) over whatever
    --output / --timing-cache named: `--output /dev/null` as root replaced the device node. A FIFO
    and a folder stand in for it; both are refused in one line and left as they were."""
    import numpy as np
    import onnx

    from tests.helpers import run_cli, tiny_conv_model

    onnx.save(tiny_conv_model(), tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    built = run_cli("build", "--model", "model.onnx", "--calib", "calib.npz", "--target", "jetson", "--no-host-report",
                    "--out", "bundle", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    os.mkfifo(tmp_path / "engine.fifo")
    (tmp_path / "cache").mkdir()
    for args, fragment in ((["--output", str(tmp_path / "engine.fifo")], "--output "),
                           (["--timing-cache", str(tmp_path / "cache")], "--timing-cache ")):
        result = subprocess.run([sys.executable, "build_engine.py", *args], cwd=tmp_path / "bundle",
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert fragment in result.stderr and "is a folder, device or FIFO; name a file to write" in result.stderr
    assert stat.S_ISFIFO(os.lstat(tmp_path / "engine.fifo").st_mode) and os.listdir(tmp_path / "cache") == []
    # build_engine.sh passed any --dla-core on to trtexec ('-1', a word); build_engine.py takes 0..255
    echo = {**os.environ, "TRTEXEC": "/bin/echo"}  # prints the command it would run, exit 0
    for value in ("-1", "x", "256", ""):
        result = subprocess.run(["sh", "build_engine.sh", "--dla-core", value], cwd=tmp_path / "bundle", env=echo,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "--dla-core needs a DLA core number 0..255" in result.stderr, (value, result)
    result = subprocess.run(["sh", "build_engine.sh", "--dla-core", "1"], cwd=tmp_path / "bundle", env=echo,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--useDLACore=1" in result.stdout, result


def test_run_py_prints_the_target_name_inert(arm_bundle, tmp_path):
    """A target profile's `name:` reaches run.py's TARGET; its summary lines printed it raw, so a
    profile named with OSC 52 (clipboard write) and a line break forged an `error:` line on the device's
    terminal. (The bundle is edited and resealed as a profile build would write it.)"""
    import json
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(arm_bundle, bundle)
    source = (bundle / "run.py").read_text()
    line = next(line for line in source.splitlines() if line.startswith("TARGET = "))
    hostile = "board\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07\nerror: forged"
    (bundle / "run.py").write_text(source.replace(line, f"TARGET = {json.dumps(hostile)}"))
    test_hostile_second_pass._reseal(bundle)
    result = _run_py(bundle, "--out", str(tmp_path / "results.json"))
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert not any(line.startswith("error:") for line in result.stdout.splitlines()), result.stdout
    assert "board\\x1b]52;c;" in result.stdout and "\\nerror: forged" in result.stdout


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-8-sig"])
def test_config_and_inventory_written_as_marked_unicode_are_read(tmp_path, encoding):
    """Windows PowerShell 5's `>` and Out-File write UTF-16LE with a byte-order mark; YAML reads it,
    but edgepipe refused such an edgepipe.yaml or inventory as 'not UTF-8 text (byte 0)'."""
    from edgepipe.config import load_config_file
    from edgepipe.delivery.fleet import load_inventory

    bom = {"utf-16-be": "\ufeff"}.get(encoding, "")  # the -be codec writes no mark of its own
    (tmp_path / "edgepipe.yaml").write_text(bom + "target: arm-cpu\ncalibration:\n  rounds: 3\n", encoding=encoding)
    assert load_config_file(tmp_path / "edgepipe.yaml") == {"target": "arm-cpu", "calibration": {"rounds": 3}}
    (tmp_path / "hosts.yml").write_text(bom + "all:\n  hosts:\n    pi1:\n      ansible_host: 10.0.0.2\n",
                                        encoding=encoding)
    hosts = load_inventory(tmp_path / "hosts.yml")
    assert [h.name for h in hosts] == ["pi1"] and hosts[0].variables["ansible_host"] == "10.0.0.2"


def test_text_that_is_no_unicode_names_the_fix(tmp_path):
    from edgepipe.config import load_config_file
    from edgepipe.errors import UserError

    (tmp_path / "edgepipe.yaml").write_bytes(b"target: arm\xe9-cpu\n")  # Latin-1
    with pytest.raises(UserError, match=r"edgepipe.yaml: config file is not UTF-8 text \(byte 11\); save it as UTF-8"):
        load_config_file(tmp_path / "edgepipe.yaml")
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(UserError, match=r"folder.yaml: is a directory, expected a config file$"):
        load_config_file(tmp_path / "folder.yaml")


def test_config_numbers_with_an_exponent_are_numbers(tmp_path):
    """PyYAML reads `1e-05` (no decimal point) as a string, so `fold.eps: 1e-05`, the default the README's
    config reference shows, was refused as "must be int or float, got str ('1e-05')"."""
    from edgepipe.config import load_config_file
    from edgepipe.errors import UserError

    (tmp_path / "edgepipe.yaml").write_text("fold:\n  eps: 1e-05\n  temperature: 2E0\npreprocess:\n  mean: [1e-1, 0.5, 5e-1]\n"
                                            "regress:\n  max_drop: +1e-2\ninput_values:\n  sr: 16e3\n")
    config = load_config_file(tmp_path / "edgepipe.yaml")
    assert config["fold"] == {"eps": 1e-05, "temperature": 2.0} and config["regress"] == {"max_drop": 0.01}
    assert config["preprocess"]["mean"] == [0.1, 0.5, 0.5] and config["input_values"] == {"sr": 16000.0}
    (tmp_path / "edgepipe.yaml").write_text("calibration:\n  rounds: 1e3\n")  # an integer field takes integers
    with pytest.raises(UserError, match=r"'calibration.rounds' must be int, got str \('1e3'\)"):
        load_config_file(tmp_path / "edgepipe.yaml")


def test_a_damaged_tiff_is_one_error_line_without_decoder_noise(tmp_path):
    """An LZW TIFF with a damaged strip: libtiff printed 'tempfile.tif: Using code not yet in table.'
    straight to file descriptor 2 (and PIL its warnings with their source lines) before edgepipe's one
    error line. Run as a subprocess: the native lines bypass Python's sys.stderr."""
    import io

    import numpy as np
    import onnx
    from PIL import Image

    from tests.helpers import run_cli, tiny_conv_model

    image = Image.fromarray(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3))
    encoded = io.BytesIO()
    image.save(encoded, "TIFF", compression="tiff_lzw")
    data = bytearray(encoded.getvalue())
    with Image.open(io.BytesIO(bytes(data))) as parsed:
        offset, length = parsed.tag_v2[273][0], parsed.tag_v2[279][0]  # the strip's offset and size
    data[offset + 4:offset + length] = b"\xff" * (length - 4)
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "scan.tiff").write_bytes(bytes(data))
    onnx.save(tiny_conv_model(), tmp_path / "model.onnx")
    result = run_cli("build", "--model", "model.onnx", "--calib", "calib", "--target", "jetson", "--out", "out",
                     "--no-host-report", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: calib/scan.tiff: cannot read image (decoder error -2); replace or delete the file"], result.stderr


def test_run_py_on_a_resealed_bundle_with_a_damaged_eval_file(arm_bundle, tmp_path):
    """run.py checks its files against SHA256SUMS; a bundle resealed around an eval/eval.npz that is
    not a zip (or whose .npy header numpy cannot parse) was a BadZipFile / TokenError traceback."""
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(arm_bundle, bundle)
    (bundle / "eval" / "eval.npz").write_bytes(b"not a zip archive")
    test_hostile_second_pass._reseal(bundle)
    result = _run_py(bundle, "--out", str(tmp_path / "results.json"))
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: %s: not a readable .npz (File is not a zip file); re-copy the bundle"
                      % (bundle / "eval" / "eval.npz")], result.stderr
    assert not (tmp_path / "results.json").exists()


def test_report_of_latency_samples_numpy_cannot_bin(tmp_path):
    """`report` of a results.json whose latency samples are all 1e308 ms was an internal error
    (np.histogram: 'Too many bins for data range'); a negative sample passed the checks that refuse a
    negative p50."""
    import json

    from edgepipe.delivery.report import render_report
    from edgepipe.errors import UserError

    results = tmp_path / "results.json"
    results.write_text(json.dumps({"latency_ms": {"p50": 1.0, "p99": 2.0, "samples": [1e308, 1e308, 1e308]}}))
    html = render_report(results)
    assert "Latency per inference" in html.read_text()
    results.write_text(json.dumps({"latency_ms": {"p50": 1.0, "p99": 2.0, "samples": [0.5, -1.0]}}))
    with pytest.raises(UserError, match=r"'latency_ms.samples' must be a list of times >= 0, got -1.0"):
        render_report(results)


def test_float_tiff_with_a_nan_pixel_is_named_as_such(tmp_path):
    """One NaN pixel in a float TIFF was refused as 'a float image with values from nan to nan'."""
    import numpy as np
    from PIL import Image

    from edgepipe.data import load_dataset
    from edgepipe.errors import UserError

    (tmp_path / "calib").mkdir()
    depth = np.full((8, 8), 0.5, np.float32)
    depth[3, 4] = np.nan
    Image.fromarray(depth, "F").save(tmp_path / "calib" / "depth.tif")
    with pytest.raises(UserError, match=r"depth.tif: a float image holding NaN or infinite pixels; edgepipe reads"):
        load_dataset(tmp_path / "calib", {"x": ((1, 3, 8, 8), np.dtype(np.float32))}, {"scale": 1.0}).sample(0)


def test_junit_xml_stays_well_formed_with_control_characters_in_names(tmp_path, capsys):
    """An output name holding \\x01 (XML 1.0 has no way to write it) reached `regress --junit` raw:
    the file was not well-formed XML and a CI server refused the whole report."""
    import json
    import xml.dom.minidom

    from edgepipe.cli.main import main

    results = {"latency_ms": {"p50": 1.0, "p99": 2.0},
               "accuracy": {"outputs": {"y\x01<&\x1b[2J": {"sqnr_db": 40.0, "argmax_agreement": 1.0}}}}
    (tmp_path / "r.json").write_text(json.dumps(results))
    with pytest.raises(SystemExit) as exit_info:
        main(["regress", "--baseline", str(tmp_path / "r.json"), "--candidate", str(tmp_path / "r.json"), "--junit",
              str(tmp_path / "junit.xml")])
    assert exit_info.value.code == 0, capsys.readouterr().err
    names = [case.getAttribute("name") for case in
             xml.dom.minidom.parse(str(tmp_path / "junit.xml")).getElementsByTagName("testcase")]
    assert "accuracy.sqnr_db[y\\x01<&\\x1b[2J]" in names, names


def test_paths_that_are_not_utf8_build_and_run(arm_bundle, tmp_path):
    """Folder and file names in Latin-1 bytes: a profile file b'board\\xff.yaml' ran the whole build,
    then writing the bundle README was an internal error (its stem named the target); a bundle in a
    folder b'o\\xff' failed in run.py (LiteRT's C++ binding takes a UTF-8 model path only)."""
    import shutil

    from edgepipe.targets import load_target

    profile = os.fsdecode(bytes(tmp_path) + b"/board\xff.yaml")
    with open(profile, "w") as handle:
        handle.write("base: arm-cpu\n")
    target = load_target(profile)
    assert target.name == "board\ufffd" and target.profile == "board\ufffd.yaml"

    bundle = os.fsdecode(bytes(tmp_path) + b"/bundle\xff")
    shutil.copytree(arm_bundle, bundle)
    result = subprocess.run([sys.executable, os.path.join(bundle, "run.py"), "--iterations", "2", "--warmup", "0"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert os.path.isfile(os.path.join(bundle, "report", "results.json"))
    # pack's archive names the folder in those bytes: verify met them as an internal error
    # (UnicodeEncodeError), compare's LiteRT probe as a TypeError (exit 3)
    for args in (["pack", bundle], ["verify", bundle + ".tar.gz"], ["compare", bundle, "--max-samples", "1",
                                                                   "--alone-samples", "1"]):
        result = subprocess.run([sys.executable, "-m", "edgepipe", *args], cwd=tmp_path, capture_output=True,
                                timeout=300)  # bytes: the paths it prints are not UTF-8
        assert result.returncode == 0, (args[0], result.stderr.decode(errors="replace"))
