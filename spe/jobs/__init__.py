"""Long-running work (ingest, extraction) as jobs: durable status and progress in the database,
run by Celery workers, safe to run twice, recovered when a worker dies."""
