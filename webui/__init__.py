"""The cogcot web board (Gradio): configure, launch and watch fine-tuning runs, evaluate checkpoints and
chat with them, over the project's own commands (it runs them; it re-implements none).

    python -m webui [--host 127.0.0.1] [--port 7860] [--auth USER:PASSWORD] [--root DIR]
"""
