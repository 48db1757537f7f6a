"""Rollout Inspector: `python app.py` serves the app at http://127.0.0.1:7860 (on Spaces, on 0.0.0.0:7860)."""

import os

from inspector.app import build_app, launch_kwargs

demo = build_app()

if __name__ == "__main__":
    on_spaces = bool(os.environ.get("SPACE_ID"))
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0" if on_spaces else "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        **launch_kwargs(),
    )
