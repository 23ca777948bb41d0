"""The sandbox page's own texts (`vqgan-clip-bot --sandbox`, `bot.sandbox`): the channel
topic, always in view at the top, and the welcome, the bot's first message in the channel.
"""

from __future__ import annotations

from pathlib import Path

import discord


def sandbox_topic(*, tiny_models: bool, configured_models: str) -> str:
    """The channel topic; `configured_models` as `bot.sandbox.model_names` says them."""
    if tiny_models:
        return ("Sandbox: a simulated Discord on this computer. Tiny random models: the images "
                "are noise without real weights.")
    return f"Sandbox: a simulated Discord on this computer. Models: {configured_models}."


def sandbox_welcome(*, tiny_models: bool, configured_models: str, device_setting: str,
                    device: str | None, kept_in: Path | None) -> discord.Embed:
    """What this page is and how to use it. `device`: where the engine runs, when it has
    said so (else the DEVICE setting, `device_setting`, is named); `kept_in`: the folder of
    the database and images, None when they are thrown away at the end."""
    embed = discord.Embed(
        title="VQGAN-CLIP sandbox",
        description=(
            "The real bot and image engine in a simulated Discord: no token, and nothing "
            "leaves this computer.\n"
            "Type `/imagine a forest rendered in low poly` below, then try **Reroll**, "
            "**Vary**, **Edit**, **Info**, **Timelapse** and **Cancel**. `/help` explains the "
            "prompt grammar."
        ),
        colour=discord.Colour.blurple(),
    )
    embed.add_field(
        name="Members",
        value="Switch with **Viewing as** at the top. *you* and *friend* are ordinary members; "
              "*mod* has Manage Server: `/quota`, `/status`, `/blocklist`, `/stats`, and "
              "cancelling anyone's job.",
        inline=False,
    )
    embed.add_field(
        name="No right-click menus here",
        value="The page has no message context menus, so **Edit image** (right-click a "
              "message -> Apps) is missing. The **Edit** button and `/edit` do the same.",
        inline=False,
    )
    if tiny_models:
        models = ("**Tiny random models: the images are noise.** The configured models "
                  f"({configured_models}) are not in MODEL_DIR; these only show the "
                  "machinery. `vqgan-clip download --list` shows how to get the real ones.")
    else:
        models = f"{configured_models}, on {device or 'the ' + device_setting + ' device'}"
    embed.add_field(name="Models", value=models, inline=False)
    data = (f"kept in `{kept_in}`" if kept_in is not None
            else "throwaway: deleted when the sandbox stops (`--sandbox-data DIR` keeps them)")
    embed.add_field(name="Database and images", value=data, inline=False)
    return embed
