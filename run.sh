#!/usr/bin/env bash
# Runs the bot: sets up the virtual environment, downloads missing models, starts the bot.
# Settings come from .env (copy config.example.env) and the environment.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh base
exec "$VENV/bin/vqgan-clip-bot" "$@"
