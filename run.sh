#!/usr/bin/env bash
# Runs the bot: sets up the virtual environment, downloads missing models, starts the bot.
# Settings come from .env (copy config.example.env) and the environment.
# ./run.sh --sandbox runs it in a simulated Discord in the browser instead (no token), which
# needs the optional sandbox extra: installed then, and only then.
set -euo pipefail
cd "$(dirname "$0")"
_extra=base
for _arg in "$@"; do
    [ "$_arg" = --sandbox ] && _extra=sandbox
done
source scripts/bootstrap.sh "$_extra"
exec "$VENV/bin/vqgan-clip-bot" "$@"
