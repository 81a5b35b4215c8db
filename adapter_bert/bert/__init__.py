"""The frozen BERT base: config, Keras encoder, checkpoint readers and tokenizers."""
