"""One router per resource; :func:`itsmflow.api.app.create_app` mounts them under ``/api``."""
