"""The HTTP API: prompt uploads, adapter downloads, live statistics, health and metrics.

Build the app with ``dso.api.app.create_app(settings, broker)``; serve it with
``dso.api.server.ApiServer`` (a uvicorn thread, used by ``dso run``) or the
``dso api`` command. This package's ``__init__`` imports nothing heavy, so loop
processes can import ``dso.api.prompt_stats`` without FastAPI.
"""
