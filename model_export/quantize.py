"""Dynamic int8 quantization of an exported ONNX file (optionally fused first) with onnxruntime's quantizer."""
from __future__ import annotations

import json
import logging
import re
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
    (A fused graph has none: they live inside its Attention nodes.)
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and not any(i in weights for i in n.input)]


def fuse(onnx_path: Path, out_path: Path, model_config: Path) -> None:
    """onnxruntime's transformer fusions (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm).

    ``opt_level=0`` applies only those fusions, nothing tied to the CPU that runs the export, so
    the file is the same whichever machine built it; the runtime's own graph optimizations still
    run at session creation. Node names of the remaining MatMuls (FFN, attention output) are kept,
    so exclusion regexes written for the unfused graph still apply.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        cfg = json.loads(Path(model_config).read_text())
        heads, hidden = int(cfg["num_attention_heads"]), int(cfg["hidden_size"])
    except (OSError, KeyError, ValueError) as exc:
        raise ExportError(f"fusion needs num_attention_heads and hidden_size from {model_config}: {exc}") from None
    logging.getLogger("onnxruntime.transformers").setLevel(logging.WARNING)
    model = optimize_model(str(onnx_path), model_type="bert", num_heads=heads, hidden_size=hidden,
                           opt_level=0, use_gpu=False)
    if not model.get_nodes_by_op_type("Attention"):
        raise ExportError("fusion found no attention block to fuse (not a BERT-family graph?); "
                          "quantize without --fuse")
    model.save_model_to_file(str(out_path))


def quantize(onnx_path: Path, out_path: Path, config: QuantizeConfig, *,
             model_config: Path | None = None) -> list[str]:
    """Write the int8 model to ``out_path``; return the node names left in fp32.

    ``model_config`` (the model's config.json, default: next to ``onnx_path``) gives the head
    count and width fusion needs.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not config.enabled:
        raise ExportError("quantize called with quantization disabled")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cirrus-quant-") as tmp:
        src = Path(onnx_path)
        if config.fuse:
            src = Path(tmp) / "fused.onnx"
            fuse(onnx_path, src, model_config or Path(onnx_path).parent / "config.json")
        excluded = matching_nodes(src, config.exclude)
        if config.fp32_activation_matmul:
            excluded += [n for n in activation_matmuls(src) if n not in excluded]
        # The quantizer warns on the root logger to run its pre-processing (shape inference for
        # static models); dynamic quantization of these graphs does not need it.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(
                src, out_path, per_channel=config.per_channel, reduce_range=config.reduce_range,
                weight_type=QuantType.QInt8 if config.weights == "s8" else QuantType.QUInt8,
                op_types_to_quantize=list(config.operators) if config.operators else None,
                nodes_to_exclude=excluded,
                # The quantizer cannot infer the types of com.microsoft fused ops ("Unable to find
                # data type ... shape_inference failed"); they are all float here.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True})
        finally:
            root.setLevel(level)
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
