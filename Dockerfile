# syntax=docker/dockerfile:1
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Package metadata first, then the sources; installed as a regular (non-editable) package.
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY schemas ./schemas
COPY ingest ./ingest
COPY consumers ./consumers
RUN pip install . \
    && rm -rf build ./*.egg-info

RUN useradd --create-home --uid 10001 --user-group signatures
USER signatures

EXPOSE 8000
ENTRYPOINT ["signatures"]
CMD ["--help"]
