"""The REST API and the web page: ``create_app`` builds the ASGI app around a loaded ``Service``."""
# no `from __future__ import annotations` here: FastAPI reads the route functions' annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from crossfuse.errors import CrossfuseError, require
from crossfuse.serve.batching import Batcher
from crossfuse.serve.security import ApiKeys
from crossfuse.serve.service import MAX_ITEMS, RequestError, Service

log = logging.getLogger("crossfuse.serve")
STATIC = Path(__file__).parent / "static"
ERROR_CODES = {401: "no API key", 403: "wrong API key", 404: "no such index or item", 409: "wrong kind of model",
               413: "request too large", 415: "unsupported file type or content type", 422: "a field is wrong",
               504: "inference took longer than the request timeout"}


def create_app(model_dir: Optional[Path] = None, indexes: Optional[Mapping[str, Path]] = None, *,
               service: Optional[Service] = None, api_keys: Optional[ApiKeys] = None, max_batch: int = 32,
               max_wait_ms: float = 5.0, max_body_mb: float = 20.0, timeout_s: float = 30.0,
               threads: Optional[int] = None, cors_origins: Sequence[str] = ()):
    """An ASGI app serving ``model_dir`` (and search ``indexes``: name -> index directory).

    The model and indexes load here, so a bad directory fails now, not on the first request.
    ``max_batch=1`` turns dynamic batching off; ``api_keys`` (non-empty) makes every /v1 route
    ask for ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; ``cors_origins`` (none by
    default) lets pages from those origins call the API.
    """
    require("fastapi", "serve", "crossfuse serve")
    require("python_multipart", "serve", "crossfuse serve (file uploads)")
    from contextlib import asynccontextmanager

    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
    from fastapi.staticfiles import StaticFiles

    if service is None:
        if model_dir is None:
            raise CrossfuseError("create_app needs a model directory (or a Service)")
        service = Service(Path(model_dir), indexes)
    keys = api_keys or ApiKeys([])
    batcher = Batcher({"predict": service.predict, "embed": service.embed, "search": service.search},
                      max_batch=max_batch, max_wait_ms=max_wait_ms, threads=threads)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()
        service.close()

    app = FastAPI(title="crossfuse", version="1", lifespan=lifespan,
                  description="Predict with a crossfuse model and search its indexes. Every modality of an item "
                  "may be left out; it is then absent exactly as in training.")
    app.state.service, app.state.batcher = service, batcher
    app.add_middleware(BodyLimit, limit=int(max_body_mb * 2 ** 20))
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])

    bearer = HTTPBearer(auto_error=False, description="an API key as a bearer token")
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")

    async def authorised(cred: Optional[HTTPAuthorizationCredentials] = Depends(bearer),
                         key: Optional[str] = Depends(header)) -> None:  # async: no thread hop per request
        if not keys:
            return
        presented = (cred.credentials if cred is not None else None) or key
        if not presented:
            raise RequestError(401, "this server needs an API key: send 'Authorization: Bearer KEY' or "
                               "'X-API-Key: KEY'", "Authorization")
        if not keys.check(presented):
            raise RequestError(403, "the API key is not valid", "Authorization")

    @app.exception_handler(RequestError)
    async def request_error(_req, exc: RequestError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(CrossfuseError)
    async def crossfuse_error(_req, exc: CrossfuseError):
        return JSONResponse({"error": str(exc), "field": None, "item": None}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(_req, exc: Exception):
        ref = uuid.uuid4().hex[:12]
        log.error("internal error %s", ref, exc_info=exc)  # the trace stays in the server's log
        return JSONResponse({"error": f"internal error (reference {ref} in the server log)", "field": None,
                             "item": None}, status_code=500)

    async def run(read, key_of):
        """Read a request (``read``: a coroutine giving its items), queue its items under
        ``key_of(items)``, await the results: (items, results). The batcher counts the request as
        on its way until its items are queued."""
        with batcher.expect():
            items = await read
            pending = batcher.submit(key_of(items), items)
        try:
            return items, await asyncio.wait_for(pending, timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(504, f"inference took longer than {timeout_s:g} s") from None

    errors = {code: {"model": ErrorBody, "description": text} for code, text in ERROR_CODES.items()}
    v1 = {"dependencies": [Depends(authorised)], "responses": errors}

    @app.get("/health", response_model=Health, summary="Liveness, and how many batches have run")
    async def health():
        return {"status": "ok", "kind": service.kind, "batches": batcher.batches, "items": batcher.items,
                "busy_seconds": batcher.busy}

    @app.get("/v1/model", response_model=ModelInfo, summary="The model: task, classes, modalities, input schema",
             **v1)
    async def model_info():
        return service.describe()

    @app.post("/v1/predict", response_model=PredictResponse, openapi_extra=_body(service),
              summary="Predict for one item or a list; any modality may be left out", **v1)
    async def predict(request: Request):
        _, predictions = await run(_items(request, service), lambda _: ("predict",))
        return {"predictions": predictions}

    @app.post("/v1/embed", response_model=EmbedResponse, openapi_extra=_body(service),
              summary="Shared-space embeddings of each item's modalities (retrieval models)", **v1)
    async def embed(request: Request):
        _, results = await run(_items(request, service), lambda _: ("embed",))
        return {"embeddings": [r["embeddings"] for r in results]}

    @app.post("/v1/search", response_model=SearchResponse, openapi_extra=_search_body(service),
              summary="Top-k items of an index for a text query or an uploaded image/audio file", **v1)
    async def search(request: Request):
        (q,), (hits,) = await run(_query(request, service), lambda qs: ("search", qs[0].index, qs[0].modality))
        return {"index": q.index, "modality": q.modality, "results": hits}

    @app.get("/v1/items/{index}/{item}/thumbnail", summary="A JPEG thumbnail of an image in an index",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}, **errors},
             dependencies=[Depends(authorised)])
    async def thumbnail(index: str, item: int):
        data = await asyncio.to_thread(service.thumbnail, index, item)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _items(request, service: Service) -> List[Any]:
    """The items of a predict/embed request: JSON {"inputs": {...} | [{...}, ...]}, or one item as
    multipart form fields (files as uploads)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        body = await _json(request)
        if not isinstance(body, dict) or set(body) != {"inputs"}:
            raise RequestError(422, "the body is {\"inputs\": {field: value, ...}} or {\"inputs\": [{...}, ...]}",
                               "inputs")
        inputs = body["inputs"]
        single = isinstance(inputs, dict)
        inputs = [inputs] if single else inputs
        if not isinstance(inputs, list) or not inputs or not all(isinstance(x, dict) for x in inputs):
            raise RequestError(422, "inputs is one item (an object) or a non-empty list of them", "inputs")
        if len(inputs) > MAX_ITEMS:
            raise RequestError(413, f"{len(inputs)} items in one request; at most {MAX_ITEMS}", "inputs")
        return await asyncio.to_thread(lambda: [service.parse_item(f, None, None if single else i)
                                                for i, f in enumerate(inputs)])
    if kind == "multipart/form-data":
        fields, files = await _form(request)
        return [await asyncio.to_thread(service.parse_item, fields, files)]
    raise RequestError(415, "send application/json or multipart/form-data", "Content-Type")


async def _query(request, service: Service) -> List[Any]:
    """A search request's one query, as a list (the batcher's unit)."""
    return [await _one_query(request, service)]


async def _one_query(request, service: Service):
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        body = await _json(request)
        if not isinstance(body, dict):
            raise RequestError(422, "the body is {\"index\": NAME, \"query\": TEXT, \"top\": K}", None)
        unknown = set(body) - {"index", "query", "top", "modality", "file"}
        if unknown:
            raise RequestError(422, "unknown field; fields are index, query, top, modality, file", sorted(unknown)[0])
        upload = None
        if body.get("file") is not None:
            from crossfuse.serve.service import decode_base64

            upload = decode_base64(body["file"], "file")
        return await asyncio.to_thread(service.parse_query, body.get("index"), body.get("query"), upload,
                                       body.get("top", 10), body.get("modality"))
    if kind == "multipart/form-data":
        fields, files = await _form(request)
        unknown = (set(fields) | set(files)) - {"index", "query", "top", "modality", "file"}
        if unknown:
            raise RequestError(422, "unknown field; fields are index, query, top, modality, file", sorted(unknown)[0])
        top = fields.get("top", "10")
        try:
            top = int(top)
        except ValueError:
            raise RequestError(422, f"top must be an integer; got {top!r}", "top") from None
        return await asyncio.to_thread(service.parse_query, fields.get("index"), fields.get("query"),
                                       files.get("file"), top, fields.get("modality") or None)
    raise RequestError(415, "send application/json or multipart/form-data", "Content-Type")


async def _json(request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(422, f"the body is not valid JSON: {exc}", None) from None


async def _form(request):
    """Multipart fields and uploads; a field sent twice is refused (which value would count?)."""
    try:
        form = await request.form(max_files=16, max_fields=256)
    except Exception as exc:  # starlette/python-multipart parse errors
        status = 413 if "exceed" in str(exc).lower() or "too large" in str(exc).lower() else 422
        raise RequestError(status, f"cannot read the multipart form: {exc}", None) from None
    fields: Dict[str, Any] = {}
    files: Dict[str, bytes] = {}
    for name, value in form.multi_items():
        if name in fields or name in files:
            raise RequestError(422, "the field is given twice", name)
        if hasattr(value, "read"):
            files[name] = await value.read()
        else:
            fields[name] = value
    await form.close()
    return fields, files


class BodyLimit:
    """413 for a request body over ``limit`` bytes: refused from Content-Length before it is read,
    and cut off while streaming when no length was declared."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send):
        body = json.dumps({"error": f"the request body is over the limit of {self.limit / 2 ** 20:g} MiB "
                           "(--max-body-mb)", "field": None, "item": None}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def _body(service: Service) -> Dict[str, Any]:
    """OpenAPI request body of predict/embed: JSON items, or one item as a multipart form."""
    item = service.input_schema()
    form = {"type": "object", "additionalProperties": False, "properties": {
        c: ({"type": "string", "format": "binary"} if d["type"] == "file" else {"type": "string"})
        for c, (_, d) in service.fields.items()}}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"type": "object", "required": ["inputs"], "additionalProperties": False,
                                        "properties": {"inputs": {"oneOf": [
                                            item, {"type": "array", "items": item, "minItems": 1,
                                                   "maxItems": MAX_ITEMS}]}}}},
        "multipart/form-data": {"schema": form}}}}


def _search_body(service: Service) -> Dict[str, Any]:
    names = list(service.indexes) or ["none"]
    props = {"index": {"type": "string", "enum": names}, "query": {"type": "string"},
             "top": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
             "modality": {"type": "string"}}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"type": "object", "required": ["index"], "additionalProperties": False,
                                        "properties": {**props, "file": {"type": "string",
                                                                         "contentEncoding": "base64"}}}},
        "multipart/form-data": {"schema": {"type": "object", "required": ["index"], "additionalProperties": False,
                                           "properties": {**props, "top": {"type": "string"},
                                                          "file": {"type": "string", "format": "binary"}}}}}}}


# ---- response models (the OpenAPI schema; schemathesis checks responses against them) ----------
from pydantic import BaseModel, ConfigDict  # noqa: E402  (pydantic comes with fastapi)


class ErrorBody(BaseModel):
    error: str
    field: Optional[str] = None
    item: Optional[int] = None


class Health(BaseModel):
    status: str
    kind: str
    batches: int
    items: int
    busy_seconds: float


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    kind: str
    task: str
    classes: List[str]
    target: Optional[str] = None
    fusion: Optional[str] = None
    modalities: List[Dict[str, Any]]
    input_schema: Dict[str, Any]
    indexes: List[Dict[str, Any]]


class Prediction(BaseModel):
    label: Optional[str] = None
    value: Optional[float] = None
    probabilities: Optional[Dict[str, float]] = None
    present: Dict[str, bool]
    weights: Optional[Dict[str, Optional[float]]] = None
    trust: Optional[Dict[str, Optional[float]]] = None
    used: Optional[Dict[str, bool]] = None
    imagined: Optional[Dict[str, bool]] = None  # absent modalities the model imagined (missing.imagine)


class PredictResponse(BaseModel):
    predictions: List[Prediction]


class EmbedResponse(BaseModel):
    embeddings: List[Dict[str, List[float]]]


class Hit(BaseModel):
    model_config = ConfigDict(extra="allow")
    rank: int
    score: float
    item: int
    value: str
    row: Optional[int] = None
    thumbnail: Optional[str] = None


class SearchResponse(BaseModel):
    index: str
    modality: str
    results: List[Hit]
