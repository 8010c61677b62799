# syntax=docker/dockerfile:1
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Fonts of the delivery PDF (`signatures export --for-target --format pdf`; ops/delivery_pdf.py
# reads them from /usr/share/fonts/truetype).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        fonts-noto-core fonts-wqy-microhei fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# The dependencies first, in a layer of their own (rebuilt only when the lock changes):
# exactly the releases requirements.lock pins, every file checked against its hash, wheels
# only (the image has no compiler). `scripts/lock` regenerates the lock from pyproject.toml.
COPY requirements.lock ./
RUN pip install --no-deps --require-hashes --only-binary=:all: -r requirements.lock

# Then the package metadata and every package pyproject.toml declares, installed as a
# regular (non-editable) package with nothing beyond the lock; `pip check` fails the build
# if the lock lacks a dependency. tests/test_image.py builds this same context and install.
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY schemas ./schemas
COPY ingest ./ingest
COPY consumers ./consumers
COPY ops ./ops
COPY bench ./bench
COPY cli ./cli
RUN pip install --no-deps . \
    && pip check \
    && rm -rf build ./*.egg-info

RUN useradd --create-home --uid 10001 --user-group signatures
USER signatures

EXPOSE 8000
ENTRYPOINT ["signatures"]
CMD ["--help"]
