"""The hub's PACT 3.0 host API (docs/hub.md "API").

create_app(api, store, clock=...)   the FastAPI application
serve(app, api)                     uvicorn, HTTPS only, until cancelled
hash_secret(secret) / verify_secret(secret, stored)   client secrets (scrypt)

app.py       the routes: /auth/token, /3/footprints, /3/footprints/{id}, /3/events
listing.py   ListFootprints' filters and pagination
events.py    events to data recipients (background, retried)
tokens.py    access tokens (HMAC-signed, valid on every instance with the same key)
secrets.py   scrypt hashes of client secrets
models.py    request and response bodies (PACT's OpenAPI, RFC 6749)
server.py    uvicorn with TLS
"""

from edge_agent.hub.api.app import HubApi, create_app, served_footprint
from edge_agent.hub.api.events import EventSender, RecipientCredentials, RetryPolicy, callback_url
from edge_agent.hub.api.secrets import hash_secret, secret_hash_problem, verify_secret
from edge_agent.hub.api.server import ApiServer, serve, tls_problems
from edge_agent.hub.api.tokens import TOKEN_KEY_ENV, TOKEN_KEY_FILE_ENV, token_key_from_environment

__all__ = [
    "TOKEN_KEY_ENV",
    "TOKEN_KEY_FILE_ENV",
    "ApiServer",
    "EventSender",
    "HubApi",
    "RecipientCredentials",
    "RetryPolicy",
    "callback_url",
    "create_app",
    "hash_secret",
    "secret_hash_problem",
    "serve",
    "served_footprint",
    "tls_problems",
    "token_key_from_environment",
    "verify_secret",
]
