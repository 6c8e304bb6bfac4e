"""The HTTP transport: KServe V1 and Open Inference Protocol (V2) REST routes over the data plane.

The ASGI front answers the prediction routes itself and hands every other request to
FastAPI; the request body is read here with its byte limit and deadline; V1 and V2 routes
are thin (bind a version, decode, infer, encode); their OpenAPI contract lives beside
them. This is the only place that speaks HTTP.
"""
