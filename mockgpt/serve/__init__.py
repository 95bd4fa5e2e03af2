"""The serve wing: the server that answers the APIs from an index.

The Litestar app (app) and the fast path in front of it (fastpath); what a worker replies to a request
(service); a busy server's layer (traffic) with its pacing, faults and metrics; recording misses from an
upstream (upstream); the state that holds for the whole server (state: the protocol and the in-process
copy; coordinator: one copy for several workers); running it all under uvicorn (server), and the ASGI the
layers speak (asgi).
"""
