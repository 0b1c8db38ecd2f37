"""``cad serve``: the engine kept warm behind a small HTTP API (FastAPI + uvicorn), one layer above training.

A volume is uploaded once into a session (a private temporary folder), later prompts name the session, and the
networks stay loaded between prompts, so a prompt costs the network's time, not Python's start and torch's import.
Every route needs the bearer token; the checks and reports are the command line's own functions, so an answer and
its refusals are those ``cad interact`` / ``cad segment`` / ``cad classify`` give. See docs/server.md.

Modules: :mod:`security` (token file, constant-time compare, loopback), :mod:`payloads` (capped gzip/base64
files and JSON bodies), :mod:`sessions` (session store, expiry, temp folders), :mod:`jobs` (the one-job lock and the
model cache), :mod:`handlers` (what each endpoint computes), :mod:`app` (routes and errors), :mod:`runner`
(uvicorn, the ready file).
"""
