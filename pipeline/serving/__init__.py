"""Serving ECO over HTTP with Ray Serve (`eco serve`, deploy/serve.yaml): see pipeline.serving.app and
docs/inference.md. `settings` and `streams` import neither torch nor Ray."""
