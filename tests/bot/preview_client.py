"""The sandbox's page, driven over its own HTTP API the way its JavaScript drives it.

SimCord's preview page (`simcord/preview/static/transport.js` and `actions.js`) sends the
page's secret token in `X-Simcord-Capability`, opens a page context (`POST /api/pages`),
reads what the server last published (`GET /api/state`) and sends each action (a command,
a click) as a numbered envelope bound to the revision it was read at (`POST /api/action`).
Tests use this to check what a person at the page would see, without a browser.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp

#: The page protocol this client speaks (SimCord 3's preview).
PROTOCOL_VERSION = 3


class PreviewPage:
    """One page context, as one browser tab is: `await PreviewPage.open(http, url)`."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.base, _, capability = url.partition("/#")
        self.headers = {"X-Simcord-Capability": capability}
        self.sequence = 0

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str,
                   viewer_id: str | None = None) -> PreviewPage:
        page = cls(http, url)
        body = {} if viewer_id is None else {"viewer_id": viewer_id}
        opened = await page._json("POST", "/api/pages", body)
        page.headers["X-Simcord-Context"] = opened["context"]["id"]
        return page

    async def state(self) -> dict[str, Any]:
        """What the page shows now: the snapshot the server last published."""
        return await self._json("GET", "/api/state")

    async def commands(self) -> list[dict[str, Any]]:
        """The slash commands this page's viewer can use."""
        catalog = await self._json("GET", "/api/commands")
        return list(catalog["entries"])

    async def command(self, name: str, **options: Any) -> dict[str, Any]:
        """Run `/name` with `options` (an attachment as `(file name, bytes)`); returns the
        action's receipt."""
        (entry,) = [e for e in await self.commands() if e["invocation"] == name]
        uploads = {key: value for key, value in options.items() if isinstance(value, tuple)}
        for index, key in enumerate(uploads):
            options[key] = {"upload": index}
        return await self.act("run_command", uploads, command_id=entry["commandId"],
                              path=entry["path"], schema_fingerprint=entry["schemaFingerprint"],
                              options=options)

    async def click(self, message: dict[str, Any], label: str) -> dict[str, Any]:
        """Click the button labelled `label` on `message` (from `state()["messages"]`)."""
        (button,) = [b for b in buttons(message) if b.get("label") == label]
        return await self.act("click", target_id=message["id"], control_key=button["control_key"])

    async def act(self, kind: str, uploads: dict[str, tuple[str, bytes]] | None = None,
                  **fields: Any) -> dict[str, Any]:
        """Send one action envelope, bound to the state the page shows now; files go with
        it as the page sends them (multipart, one `file:<option>` part each, in order)."""
        state = await self.state()
        self.sequence += 1
        body = {
            "protocol_version": PROTOCOL_VERSION, "sequence": self.sequence,
            "request_id": uuid.uuid4().hex, "generation": state["context"]["generation"],
            "bot_generation": state["botGeneration"],
            "published_revision": state["publishedRevision"], "kind": kind, **fields,
        }
        if not uploads:
            return await self._json("POST", "/api/action", body)
        form = aiohttp.FormData()
        form.add_field("payload", json.dumps(body), content_type="application/json")
        for option, (filename, data) in uploads.items():
            form.add_field(f"file:{option}", data, filename=filename)
        async with self.http.post(self.base + "/api/action", data=form, headers=self.headers) as answer:
            assert answer.status == 200, f"POST /api/action: HTTP {answer.status} {await answer.text()}"
            return await answer.json()

    async def wait_for_message(self, predicate: Callable[[dict[str, Any]], bool],
                               timeout: float = 10.0) -> dict[str, Any]:
        """The first message the page shows that satisfies `predicate`, polling as the
        page does (every 0.5 s); AssertionError after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            state = await self.state()
            found = [m for m in state["messages"].values() if predicate(m)]
            if found:
                return found[-1]
            assert loop.time() < deadline, (
                f"no such message on the page after {timeout} s; it shows: "
                f"{[describe(m) for m in state['messages'].values()]}")
            await asyncio.sleep(0.5)

    async def asset(self, asset_id: str) -> bytes:
        async with self.http.get(f"{self.base}/api/assets/{asset_id}", headers=self.headers) as answer:
            assert answer.status == 200, answer.status
            return await answer.read()

    async def _json(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.base + path, json=body, headers=self.headers) as answer:
            assert answer.status == 200, f"{method} {path}: HTTP {answer.status} {await answer.text()}"
            return await answer.json()


def buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The buttons of a message, in order."""
    found: list[dict[str, Any]] = []

    def walk(component: Any) -> None:
        if isinstance(component, dict):
            if component.get("type") == 2:
                found.append(component)
            for child in component.get("components") or []:
                walk(child)
        elif isinstance(component, list):
            for child in component:
                walk(child)

    walk(message.get("components") or [])
    return found


def button_labels(message: dict[str, Any]) -> list[str]:
    return [str(b.get("label")) for b in buttons(message)]


def embed_text(message: dict[str, Any]) -> str:
    """Every embed's title, description and fields, as plain text."""
    parts: list[str] = []
    for embed in message.get("embeds") or []:
        parts += [embed.get("title") or "", embed.get("description") or ""]
        for field in embed.get("fields") or []:
            parts += [field.get("name") or "", field.get("value") or ""]
    return "\n".join(p for p in parts if p)


def describe(message: dict[str, Any]) -> str:
    return f"{message.get('content', '')!r} {embed_text(message)[:60]!r} {button_labels(message)}"
