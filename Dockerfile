# The bot and its engine in one image. The engine needs an NVIDIA GPU at run time:
#   docker build -t vqgan-clip-bot .
#   docker run --gpus all --env-file .env -v vqgan-models:/app/models -v vqgan-data:/app/data vqgan-clip-bot
# The default MODEL_DIR (./models) and DATABASE_PATH/RESULTS_DIR (./data/...) resolve under
# /app, the working directory, so the same .env works with and without Docker.
# PyTorch's wheels bring their own CUDA libraries; the base image supplies the runtime
# environment the NVIDIA container toolkit expects.
FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first, so that a code change does not reinstall PyTorch.
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
RUN mkdir -p bot engine cogs && touch bot/__init__.py engine/__init__.py cogs/__init__.py \
    && pip install --upgrade pip "setuptools<81" wheel \
    && pip install . \
    && pip uninstall -y vqgan-clip-bot
COPY bot ./bot
COPY engine ./engine
COPY cogs ./cogs
RUN pip install --no-deps .

# A non-root user; models and the database live on volumes so they survive upgrades.
RUN useradd --create-home --uid 10001 bot \
    && mkdir -p /app/models /app/data \
    && chown bot:bot /app/models /app/data
USER bot
VOLUME ["/app/models", "/app/data"]

# Downloads missing default models into /app/models on first start, then runs the bot.
CMD ["vqgan-clip-bot"]
