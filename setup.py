"""InternVL-Med: InternVL-compatible fine-tuning, evaluation and inference with pluggable medical vision encoders.

Two packages are installed: ``internvl`` (the core, from ``internvl_chat/``) and ``patches`` (the domain plugins,
discovered by the core through the ``internvl.plugins`` entry-point group, never imported by name).
"""
from setuptools import find_packages, setup

core = find_packages(where="internvl_chat", include=["internvl", "internvl.*"])
plugins = find_packages(include=["patches", "patches.*"])

setup(
    name="internvl-med",
    version="0.1.0",
    description="InternVL-compatible VLM framework with pluggable pathology and neuro-imaging vision encoders",
    python_requires=">=3.10",
    packages=core + plugins,
    package_dir={"internvl": "internvl_chat/internvl", "patches": "patches"},
    include_package_data=True,
    package_data={"patches": ["**/*.json", "**/*.yaml", "**/*.md"]},
    install_requires=[
        # plain PyPI torch (CPU is fine); 2.13.0's local CPU wheel breaks torchvision, which timm imports
        "torch>=2.4,!=2.13.0",
        "torchvision",
        "transformers==5.23.0",
        "tokenizers>=0.21",
        "peft==0.21.2",
        "accelerate>=1.0",
        "deepspeed>=0.16",
        "safetensors>=0.4",
        "timm>=1.0.15",
        "diffusers>=0.32",
        "einops",
        "numpy",
        "Pillow",
        "tqdm",
        "tensorboard",
        "matplotlib",
        "scikit-learn",
        "scipy",
        "nltk",
        "rouge-score",
        "lifelines",
        "openslide-python>=1.4",
        "openslide-bin>=4.0",
        "tifffile",
        "h5py",
        "nibabel>=5",
        "pydicom>=3",
        "pandas",
        "pyyaml",
        "monai>=1.4",
        "jinja2",             # the HTML evaluation report
        "torchmetrics>=1.4",  # detection mAP (eval task 'detection'); its bbox mAP needs pycocotools
        "pycocotools",
        "bert-score>=0.3.13",  # --metrics bertscore (model found locally or reported as not computed)
        "gradio>=5,<7",        # the web demo: python -m internvl.serve
    ],
    extras_require={
        # selenium drives the system Chromium (apt-get install chromium chromium-driver) in the browser tests
        "dev": ["pytest>=8", "pytest-timeout", "selenium>=4.20", "gradio_client"],
        "flash": ["flash-attn>=2.5"],
        # clinical report metrics (RadGraph F1, RaTEScore, GREEN); heavy: medspacy, stanza, datasets, and
        # radeval 2.2.1 pins numpy < 2, so install it in its own environment if that clashes
        "report-metrics": ["radeval>=2.2"],
    },
    entry_points={
        "internvl.plugins": [
            "pathology = patches.pathology",
            "neuro = patches.neuro",
            "brainfound = patches.brainfound",
        ],
    },
)
