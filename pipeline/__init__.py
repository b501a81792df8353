"""mailpipe's domain layer: sources, normalization, contacts, embeddings, insights, storage.

Nothing in this package imports Celery; `tasks/` is the glue that runs these functions on workers.
"""
