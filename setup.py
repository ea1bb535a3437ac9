"""Distribution `cogcot`: CogVLM fine-tuning on SwissArmyTransformer with LLaVA-CoT staged reasoning."""
from setuptools import setup

setup(
    name="cogcot",
    version="0.1.0",
    description="Fine-tune CogVLM-style vision-language models on SAT/DeepSpeed and search over LLaVA-CoT reasoning stages",
    python_requires=">=3.9",
    packages=["models", "dataset", "finetune", "inference", "webui"],
    package_data={"finetune": ["*.sh", "configs/*.json"], "dataset": ["teacher_prompt.txt"]},
    install_requires=[
        "torch>=2.3",  # torch.get_default_device
        "deepspeed>=0.14",
        "SwissArmyTransformer==0.4.12",
        "pillow>=9",
        "sentencepiece>=0.1.99",
        "safetensors>=0.4",
        "numpy",
        "tqdm",
        "matplotlib",
        "tensorboardX",
        "psutil",  # benchmarks/: peak resident memory on CPU (DeepSpeed needs it too)
        "webdataset>=0.2",  # dataset.shards: tar shards for --stage pretrain (SAT's own reader builds on it)
        "braceexpand",  # shard patterns such as shards/cap-{000000..000127}.tar
        "openai>=1.40",  # dataset.teacher and the `api` judge: the client of OpenAI-compatible endpoints
        # imported by SwissArmyTransformer without being declared by it
        "requests",
        "triton",
        "wandb",
    ],
    extras_require={
        # inference.server: the OpenAI-compatible HTTP server
        "serve": ["fastapi>=0.110", "uvicorn>=0.29"],
        # webui: the Gradio board
        "web": ["gradio>=5,<7"],
        # the suite starts the server and drives the board in a headless browser (Debian's chromium)
        "test": ["pytest>=7", "httpx>=0.27", "playwright>=1.40", "fastapi>=0.110", "uvicorn>=0.29", "gradio>=5,<7"],
        # only for the opt-in tests against the Hugging Face CogVLM code (tests/test_hf_equivalence.py):
        # that remote code runs on transformers 4.x, not 5.x
        "hf": ["transformers>=4.36,<5", "peft>=0.10"],
        # CUDA only: the variable-length attention kernel for --packing (SDPA over a block mask without it)
        "flash": ["flash-attn>=2.3"],
    },
    entry_points={
        "console_scripts": [
            "cogcot-chat=inference.cli_demo:main",
            "cogcot-evaluate=inference.evaluate:main",
            "cogcot-synth=dataset.synth:main",
            "cogcot-inspect=dataset.inspect:main",
            "cogcot-teacher=dataset.teacher:main",
            "cogcot-serve=inference.server:main",
            "cogcot-board=webui.__main__:main",  # needs the [web] extra
        ]
    },
)
