"""The page and its API (the only package that imports gradio): `build_app()` assembles the controls, the
tabs (`app.tabs`, one module each) and the endpoints (`app.api`); `launch_kwargs()` completes `launch()`."""

from .page import build_app, launch_kwargs

__all__ = ["build_app", "launch_kwargs"]
