"""Helpers shared by the model_export tests: run the CLI in-process, embed with a bundle via ORT."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np


def run_cli(*argv: str) -> tuple[int, dict | list | None, str]:
    """``python -m model_export ...`` in-process: (exit code, parsed --json stdout, stderr)."""
    from model_export.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    text = out.getvalue().strip()
    return code, (json.loads(text) if text else None), err.getvalue()


def bundle_outputs(bundle: Path, texts: list[str]) -> np.ndarray:
    """What a bundle serves for ``texts``, computed only from the bundle's own files + manifest."""
    import onnxruntime as ort

    from functions.core.inference.manifest import Manifest
    from model_export.tasks.base import encode, load_tokenizer
    from model_export.tasks.feature_extraction import pool
    from model_export.tasks.text_classification import softmax

    manifest = Manifest.read(bundle)
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = encode(load_tokenizer(bundle / "tokenizer.json"), texts, {i.name for i in session.get_inputs()})
    raw = session.run([manifest.output_name], feed)[0]
    if manifest.task == "feature-extraction":
        return pool(raw, feed["attention_mask"], manifest.pooling, manifest.normalize)
    return softmax(raw)
