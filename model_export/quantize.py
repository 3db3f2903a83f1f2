"""Dynamic int8 quantization of an exported ONNX file with the target architecture's preset."""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path

from model_export.config import QuantizeConfig
from model_export.errors import ExportError


def matching_nodes(onnx_path: Path, patterns: tuple[str, ...]) -> list[str]:
    """Names of graph nodes matching any regex in ``patterns`` (exclusions stay model-agnostic)."""
    if not patterns:
        return []
    import onnx

    regexes = [re.compile(p) for p in patterns]
    model = onnx.load(str(onnx_path), load_external_data=False)
    return [n.name for n in model.graph.node if any(r.search(n.name) for r in regexes)]


def activation_matmuls(onnx_path: Path) -> list[str]:
    """MatMul nodes with no weight input (attention scores, probs x values).

    Dynamic quantization would requantize softmax probabilities to uint8 per batch, which costs
    most of the attention accuracy and saves no weight bytes, so they stay fp32 by default.
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and not any(i in weights for i in n.input)]


def quantize(onnx_path: Path, out_path: Path, config: QuantizeConfig) -> list[str]:
    """Write the int8 model to ``out_path``; return the node names left in fp32."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    if not config.enabled:
        raise ExportError("quantize called with quantization disabled")
    excluded = matching_nodes(onnx_path, config.exclude)
    if config.fp32_activation_matmul:
        excluded += [n for n in activation_matmuls(onnx_path) if n not in excluded]
    factory = AutoQuantizationConfig.avx2 if config.preset == "avx2" else AutoQuantizationConfig.arm64
    qconfig = factory(is_static=False, per_channel=config.per_channel, nodes_to_exclude=excluded,
                      operators_to_quantize=list(config.operators) if config.operators else None)
    # optimum's quantizer logs every node at INFO; keep the CLI's stage lines readable.
    logging.getLogger("optimum").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="cirrus-quant-") as tmp:
        # ORTQuantizer wants a folder; give it only the model so it copies nothing else around.
        src = Path(tmp) / "in"
        src.mkdir()
        shutil.copyfile(onnx_path, src / "model.onnx")
        quantizer = ORTQuantizer.from_pretrained(src, file_name="model.onnx")
        quantizer.quantize(qconfig, Path(tmp) / "out")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(Path(tmp) / "out" / "model_quantized.onnx", out_path)
    return excluded
