"""The vault server: API, database, registration, policies, scheduler, jobs, retention and GC.

Entry points: :func:`kluis.vault.app.create_app` builds the FastAPI application from a
:class:`kluis.vault.config.VaultConfig`; ``kluis vault serve`` runs it under uvicorn.
"""
