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


# ---------------------------------------------------------------- weight-only (decoders)

def untie_lm_head(model) -> str | None:
    """Give a tied LM head its own weight initializer; returns the head MatMul's name.

    optimum exports a tied head as ``MatMul(hidden, Transpose(embed_tokens))``: onnxruntime folds
    that transpose into a second fp32 copy at load anyway, and the block quantizer only takes a
    constant weight, so the head is written out as a constant (then quantized like the rest).
    """
    from onnx import numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2:
            continue
        src = producers.get(node.input[1])
        if src is None or src.op_type != "Transpose" or src.input[0] not in inits:
            continue
        weight = numpy_helper.to_array(inits[src.input[0]])
        if weight.ndim != 2:
            continue
        head = numpy_helper.from_array(weight.T.copy(), name="lm_head.weight")
        model.graph.initializer.append(head)
        node.input[1] = head.name
        if not any(src.output[0] in n.input for n in model.graph.node if n is not node):
            model.graph.node.remove(src)
        return node.name
    return None


def _embedding_gather(model):
    """The token-embedding Gather: a constant 2-D table indexed by the ``input_ids`` input."""
    inits = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[0] in inits and node.input[1] == "input_ids":
            return node, inits[node.input[0]]
    return None, None


def quantize_embedding_int8(model) -> str | None:
    """Token embedding as int8 rows with one fp32 scale per row (symmetric), in plain ONNX ops.

    ``Gather(int8 table) -> Cast -> Mul(Gather(row scales))`` dequantizes only the rows a step
    looks up; error per element is at most max|row| / 254.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    node, table = _embedding_gather(model)
    if node is None:
        return None
    weight = numpy_helper.to_array(table).astype(np.float32)
    scale = np.abs(weight).max(axis=1, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
    base = table.name
    model.graph.initializer.remove(table)
    model.graph.initializer.extend([numpy_helper.from_array(q, base + "_int8"),
                                    numpy_helper.from_array(scale.astype(np.float32), base + "_row_scale")])
    out = node.output[0]
    new = [helper.make_node("Gather", [base + "_int8", node.input[1]], [out + "_q"], name=node.name + "_q", axis=0),
           helper.make_node("Cast", [out + "_q"], [out + "_f"], name=node.name + "_cast", to=onnx.TensorProto.FLOAT),
           helper.make_node("Gather", [base + "_row_scale", node.input[1]], [out + "_s"], name=node.name + "_s",
                            axis=0),
           helper.make_node("Mul", [out + "_f", out + "_s"], [out], name=node.name + "_dq")]
    idx = list(model.graph.node).index(node)
    model.graph.node.remove(node)
    for offset, n in enumerate(new):
        model.graph.node.insert(idx + offset, n)
    return node.name


def weight_only_quantize(onnx_path: Path, out_path: Path, config) -> list[str]:
    """Block-wise weight-only quantization (``MatMulNBits``) of every constant-weight MatMul.

    ``config`` is a :class:`model_export.config.WeightOnlyConfig`. The LM head is untied and
    quantized with ``head_bits``; the token embedding becomes int4 ``GatherBlockQuantized``
    (``embedding_bits=4``), int8 rows (8) or stays fp32 (0). Returns the MatMul nodes left fp32.
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime").setLevel(logging.WARNING)
    model = onnx.load(str(onnx_path))
    head = untie_lm_head(model) if config.head_bits else None
    excluded = matching_nodes_in(model, config.exclude)
    if config.head_bits == 0:
        excluded += [n.name for n in model.graph.node if n.op_type == "MatMul" and "lm_head" in n.name]

    def run(m, bits, *, exclude=(), include=None, ops=("MatMul",), block=config.block_size):
        q = MatMulNBitsQuantizer(m, bits=bits, block_size=block, is_symmetric=config.symmetric,
                                 accuracy_level=config.accuracy_level, nodes_to_exclude=list(exclude),
                                 nodes_to_include=include, op_types_to_quantize=ops,
                                 quant_axes=(("MatMul", 0), ("Gather", 1)))
        q.process()
        return q.model.model

    def others(m, op, keep):  # a later pass touches only its own node
        return [n.name for n in m.graph.node if n.op_type == op and n.name != keep]

    model = run(model, config.bits, exclude=[*excluded, *([head] if head else [])])
    if head and config.head_bits:
        model = run(model, config.head_bits, exclude=others(model, "MatMul", head), include=[head])
    if config.embedding_bits == 4:
        node, _ = _embedding_gather(model)
        if node is not None:
            model = run(model, 4, exclude=others(model, "Gather", node.name), include=[node.name], ops=("Gather",),
                        block=config.embedding_block_size)
    elif config.embedding_bits == 8:
        quantize_embedding_int8(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return excluded


def matching_nodes_in(model, patterns: tuple[str, ...]) -> list[str]:
    regexes = [re.compile(p) for p in patterns]
    return [n.name for n in model.graph.node if any(r.search(n.name) for r in regexes)] if regexes else []
