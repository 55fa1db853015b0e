"""Serving: a REST API and a web page over a model and its search indexes (extra ``crossfuse[serve]``)."""
from crossfuse.serve.batching import Batcher
from crossfuse.serve.service import RequestError, Service


def create_app(*args, **kwargs):
    """The ASGI app (see ``crossfuse.serve.app.create_app``); imports FastAPI only when called."""
    from crossfuse.serve.app import create_app as build

    return build(*args, **kwargs)


__all__ = ["Batcher", "create_app", "RequestError", "Service"]
