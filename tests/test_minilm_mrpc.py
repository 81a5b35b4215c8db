"""Sanity check on real parts: a Houlsby adapter on the packaged MiniLM, one epoch of MRPC train."""

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

from adapter_bert import AdapterBertModel, load_tokenizer


def _read_mrpc(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return ([r["#1 String"] for r in rows], [r["#2 String"] for r in rows],
            np.array([int(r["Quality"]) for r in rows], np.int32))


@pytest.mark.slow
def test_houlsby_adapter_one_epoch_beats_majority_class(glue_dir):
    keras.utils.set_random_seed(0)
    model = AdapterBertModel.from_pretrained("all-minilm-l6-v2")
    tokenizer = load_tokenizer(model.checkpoint_dir)
    model.add_adapter("mrpc", config="double_seq_bn[reduction_factor=12, non_linearity='gelu', "
                                     "init_weights='houlsby', task_layer_norm=True]")
    model.add_classification_head("mrpc", num_labels=2, pooling="mean")
    model.train_adapter("mrpc")
    base_before = [w.numpy().copy() for w in model.bert.weights]

    a, b, labels = _read_mrpc(glue_dir / "MRPC" / "train.tsv")
    optimizer = keras.optimizers.AdamW(1e-3, weight_decay=0.0)
    head = model.heads["mrpc"]
    spec = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[{"input_ids": spec, "attention_mask": spec, "token_type_ids": spec},
                                  tf.TensorSpec([None], tf.int32)])
    def train_step(inputs, y):
        with tf.GradientTape() as tape:
            loss = head.loss(y, model(inputs, training=True))
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights))
        return loss

    order = np.random.default_rng(0).permutation(len(labels))
    batch = 32
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        features = tokenizer.encode([a[i] for i in idx], [b[i] for i in idx], max_seq_length=128)
        train_step(features, labels[idx])

    a, b, labels = _read_mrpc(glue_dir / "MRPC" / "dev.tsv")
    predictions = []
    for start in range(0, len(labels), 64):
        features = tokenizer.encode(a[start:start + 64], b[start:start + 64], max_seq_length=128)
        predictions.append(np.argmax(model(features).numpy(), -1))
    accuracy = float((np.concatenate(predictions) == labels).mean())
    majority = max(labels.mean(), 1 - labels.mean())  # 0.684 on MRPC dev
    print(f"MRPC dev accuracy after one epoch: {accuracy:.4f} (majority class {majority:.4f})")
    assert accuracy > majority + 0.02
    for w, before in zip(model.bert.weights, base_before):
        np.testing.assert_array_equal(w.numpy(), before)
