"""The farm server's HTTP API (FastAPI): one router per area, the request models apart.

Kept free of imports so that the CLI's client can name the API's prefix without loading FastAPI.
"""

PREFIX = "/api/v1"  # the API's version 1
