"""The HTTP API: prompt uploads, adapter downloads, live statistics, health and metrics.

Build the app with ``dso.api.app.create_app(settings, broker)``; serve it with
``dso.api.server.ApiServer`` (a uvicorn thread, used by ``dso run``) or the
``dso api`` command. The loop's roles never import this package (an import-linter
contract in pyproject.toml); what they share with it lives in ``dso.broker``.
"""
