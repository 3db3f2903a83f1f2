"""LangChain, LlamaIndex and LiteLLM over HTTP against the local system, configured as docs/frameworks/ says.

The chat model is smollm2-135m-instruct (the dev stage's chat model): these tests check that each framework's
requests are accepted and its answers parsed, not the words. Embeddings are checked against the
official client's vectors for the same texts.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

EMBEDDER = "all-minilm-l6-v2"
GEN_MODEL = "smollm2-135m-instruct"
TEXTS = ["where is my parcel?", "I want a refund", "the box arrived damaged"]


@pytest.fixture(scope="module")
def reference(local_cirrus):
    from openai import OpenAI

    client = OpenAI(base_url=local_cirrus.url + "/v1", api_key=local_cirrus.key, max_retries=0)
    return np.array([d.embedding for d in client.embeddings.create(model=EMBEDDER, input=TEXTS,
                                                                   encoding_format="float").data])


def _close(vectors, reference) -> None:
    got = np.array(vectors)
    assert got.shape == reference.shape == (len(TEXTS), 384)
    assert np.allclose(got, reference, atol=1e-5)


# --- LangChain (langchain-openai) -----------------------------------------------------------------
def test_langchain_openai_embeddings(local_cirrus, reference):
    from langchain_openai import OpenAIEmbeddings

    emb = OpenAIEmbeddings(model=EMBEDDER, base_url=local_cirrus.url + "/v1", api_key=local_cirrus.key,
                           check_embedding_ctx_length=False)
    _close(emb.embed_documents(TEXTS), reference)
    # Alone rather than with batch-mates: int8 activations are quantized per batch (docs/quantization.md).
    assert float(np.dot(emb.embed_query(TEXTS[0]), reference[0])) > 0.99


def test_langchain_chat_openai_invoke(local_cirrus):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=GEN_MODEL, base_url=local_cirrus.url + "/v1", api_key=local_cirrus.key,
                     max_tokens=8, temperature=0, max_retries=0)
    msg = llm.invoke("Say hello")
    assert isinstance(msg.content, str)
    assert msg.response_metadata["finish_reason"] in ("stop", "length")
    assert 0 < msg.usage_metadata["output_tokens"] <= 8
    assert llm.invoke("Say hello").content == msg.content  # temperature 0: the same reply


def test_langchain_chat_openai_stream_is_the_invoke_reply_in_pieces(local_cirrus):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=GEN_MODEL, base_url=local_cirrus.url + "/v1", api_key=local_cirrus.key,
                     max_tokens=12, temperature=0, max_retries=0, stream_usage=True)
    whole = llm.invoke("Name a colour.")
    chunks = list(llm.stream("Name a colour."))
    assert len([c for c in chunks if c.content]) > 1  # token by token, not one buffered piece
    assert "".join(c.content for c in chunks) == whole.content
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert usage and usage[-1]["output_tokens"] == whole.usage_metadata["output_tokens"]


# --- LlamaIndex (OpenAI-compatible classes) -------------------------------------------------------
def test_llamaindex_openai_like_embedding(local_cirrus, reference):
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    emb = OpenAILikeEmbedding(model_name=EMBEDDER, api_base=local_cirrus.url + "/v1", api_key=local_cirrus.key)
    _close(emb.get_text_embedding_batch(TEXTS), reference)


def test_llamaindex_openai_like_llm_chat_and_complete(local_cirrus):
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(model=GEN_MODEL, api_base=local_cirrus.url + "/v1", api_key=local_cirrus.key,
                     is_chat_model=True, context_window=1024, max_tokens=8, temperature=0, max_retries=0)
    chat = llm.chat([ChatMessage(role="user", content="Say hello")])
    assert isinstance(chat.message.content, str)
    assert llm.complete("Say hello").text == chat.message.content  # complete() goes through chat here
    streamed = list(llm.stream_chat([ChatMessage(role="user", content="Say hello")]))
    assert len(streamed) > 1 and streamed[-1].message.content == chat.message.content


# --- LiteLLM (openai/ provider) -------------------------------------------------------------------
@pytest.fixture(scope="module")
def litellm_module():
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no fetch of the price list at import
    import litellm

    litellm.telemetry = False
    return litellm


def test_litellm_openai_provider_embedding(local_cirrus, reference, litellm_module):
    out = litellm_module.embedding(model=f"openai/{EMBEDDER}", input=TEXTS, api_base=local_cirrus.url + "/v1",
                                   api_key=local_cirrus.key, encoding_format="float")
    _close([d["embedding"] for d in out.data], reference)


def test_litellm_openai_provider_completion(local_cirrus, litellm_module):
    out = litellm_module.completion(model=f"openai/{GEN_MODEL}", api_base=local_cirrus.url + "/v1",
                                    api_key=local_cirrus.key, messages=[{"role": "user", "content": "Say hello"}],
                                    max_tokens=8, temperature=0, num_retries=0)
    assert isinstance(out.choices[0].message.content, str)
    assert out.choices[0].finish_reason in ("stop", "length") and 0 < out.usage.completion_tokens <= 8


def test_litellm_openai_provider_stream(local_cirrus, litellm_module):
    kw = dict(model=f"openai/{GEN_MODEL}", api_base=local_cirrus.url + "/v1", api_key=local_cirrus.key,
              messages=[{"role": "user", "content": "Say hello"}], max_tokens=8, temperature=0, num_retries=0)
    whole = litellm_module.completion(**kw).choices[0].message.content
    pieces = [c.choices[0].delta.content or "" for c in litellm_module.completion(stream=True, **kw) if c.choices]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == whole
