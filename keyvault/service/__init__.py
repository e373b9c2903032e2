"""The HTTP JSON service for platforms that cannot link the library (docs/service.md).

Needs the ``service`` extra (uvicorn with uvloop and httptools, msgspec):
``pip install 'keyvault[service]'``.
"""
