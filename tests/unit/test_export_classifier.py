"""The demo classifier bundle: trained here, exported as text-classification, accurate on held-out text."""
from __future__ import annotations

import numpy as np

from functions.core.inference.manifest import Manifest, verify_bundle
from model_export.classifier import load_examples
from export_support import bundle_outputs

NAME = "cirrus-intent-minilm"


def test_intent_set_is_large_varied_and_split(tmp_path):
    train, test, labels = load_examples()
    assert len(train) + len(test) >= 300 and len(labels) >= 6
    assert not {r["text"] for r in train} & {r["text"] for r in test}
    assert {r["label"] for r in test} == set(labels)


def test_classifier_bundle_records_labels_and_heldout_accuracy(bundles_dir):
    manifest = verify_bundle(bundles_dir / NAME)
    _, _, labels = load_examples()
    assert manifest.labels == labels
    training = manifest.model_extra["training"]
    assert training["heldout_accuracy"] >= 0.9 and training["heldout_examples"] == 72
    assert manifest.source.id.startswith("cirrus:cirrus-intent-minilm")


def test_shipped_int8_classifier_is_accurate_on_the_heldout_split(bundles_dir):
    _, test, _ = load_examples()
    manifest = Manifest.read(bundles_dir / NAME)
    probs = bundle_outputs(bundles_dir / NAME, [r["text"] for r in test])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    predicted = [manifest.labels[i] for i in probs.argmax(axis=1)]
    accuracy = np.mean([p == r["label"] for p, r in zip(predicted, test)])
    assert accuracy >= 0.9
    # and it generalises to wording written for this test, in none of the intent set's splits
    novel = {"has my parcel been shipped yet or not": "track_order",
             "please call off the order I made today": "cancel_order",
             "I would like my money back for the broken toaster": "refund",
             "send the package to my new flat instead": "change_address",
             "I cannot sign into my account": "login_problem",
             "you billed my visa two times": "billing",
             "the app shows a white screen and then crashes": "technical_issue",
             "can I talk to an actual person please": "human_agent"}
    probs = bundle_outputs(bundles_dir / NAME, list(novel))
    assert [manifest.labels[i] for i in probs.argmax(axis=1)] == list(novel.values())
