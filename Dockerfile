FROM python:3.11-slim
WORKDIR /app
# CPU torch first and pinned: an unpinned torch pulls several GB of CUDA wheels.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY pipeline pipeline
COPY tasks tasks
COPY migrations migrations
RUN pip install --no-cache-dir .
ENV HF_HUB_OFFLINE=1
CMD ["celery", "-A", "tasks", "worker"]
