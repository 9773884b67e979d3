"""atommem-jax: AtomMem (learnable atomic memory operations) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="atommem-jax",
    version="0.1.0",
    description=(
        "JAX/Flax reimplementation of AtomMem: a long-context memory agent whose "
        "atomic CRUD memory policy is learned with SFT and GRPO."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["atommem_jax", "atommem_jax.*"]),
    # The prompt templates ship inside the package, so a non-editable install finds them.
    package_data={"atommem_jax": ["py.typed", "prompts/*.txt", "trained/*.safetensors", "trained/*/*"]},
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "transformers>=5.0,<6",
        "scann>=1.4.2,<1.5",
        "tensorflow-datasets>=4.9.10,<4.10",
        "array_record>=0.8",
        "importlib_resources>=6",  # tfds 4.9.10 needs it to locate builder code (not declared)
        "ml-collections>=1.0",
        "safetensors>=0.4",
        "tokenizers>=0.21",
        "gguf>=0.17",  # reads the shipped SmolLM2 GGUF (from_gguf)
        "numpy>=2.0",
        "tqdm>=4.66",
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
        "matplotlib>=3.8",
        "absl-py>=2.1",
    ],
    extras_require={
        # torch only for parity tests against transformers' PyTorch models.
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "torch==2.13.0",
            "sentence-transformers>=3",
            "accelerate>=1.0",  # transformers needs it to load GGUF models (GGUF parity tests)
            # launch/aot.py compiles for TPU topologies on a CPU host (tests/test_aot.py).
            "libtpu==0.0.42.1",
        ],
        "tpu": ["jax[tpu]>=0.10.2,<0.11", "libtpu"],
    },
)
