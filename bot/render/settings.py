"""`/settings`: a member's own defaults, as `/settings` and `/usage` show them."""

from __future__ import annotations

#: Labels of the shapes (`bot.requests.SHAPES`), as `/imagine size:` offers them.
SHAPE_LABELS: dict[str, str] = {
    "square": "square (1:1)",
    "portrait": "portrait (3:4)",
    "landscape": "landscape (4:3)",
    "wide": "wide (16:9)",
    "tall": "tall (9:16)",
}


def settings_iterations_out_of_range(asked: int, maximum: int) -> str:
    return (f"Your default `iterations` must be between 1 and {maximum} on this server "
            f"(you asked for {asked}).")


def settings_reset_conflict(field_name: str) -> str:
    return (f"You asked to both set and reset `{field_name}`: do one of the two. "
            "`reset` puts the server's default back.")


def member_defaults_lines(*, shape: str | None, shape_size: tuple[int, int],
                          iterations: int | None, iterations_set: int | None,
                          server_size: tuple[int, int], server_iterations: int,
                          max_iterations: int) -> list[str]:
    """A member's defaults, one line each, as `/settings` and `/usage` show them.

    `shape` is the member's own shape (None: the server's default size) and `shape_size` the
    size it gives here; `iterations` is what applies (the member's own, capped at
    MAX_ITERATIONS; None: the server's), `iterations_set` what the member stored."""
    server_size_text = f"{server_size[0]}×{server_size[1]}"
    if shape is None:
        shape_line = f"Shape: **the server's default**, {server_size_text}."
    else:
        shape_line = (f"Shape: **{SHAPE_LABELS.get(shape, shape)}**, "
                      f"{shape_size[0]}×{shape_size[1]}, your own "
                      f"(server default: {server_size_text}).")
    if iterations is None:
        iterations_line = f"Iterations: **the server's default**, {server_iterations}."
    elif iterations_set is not None and iterations_set > iterations:
        iterations_line = (f"Iterations: **{iterations}**, your own: you set {iterations_set}, and "
                           f"this server now allows at most {max_iterations}.")
    else:
        iterations_line = (f"Iterations: **{iterations}**, your own "
                           f"(server default: {server_iterations}, at most {max_iterations}).")
    return [shape_line, iterations_line]


def settings_text(lines: list[str], *, changed: bool) -> str:
    """`/settings`: the member's defaults and how they apply."""
    head = "Saved. " if changed else ""
    return "\n".join([
        f"**{head}Your defaults on this server**", *lines,
        "-# They apply when you leave `size` out of `/imagine` (a starting image keeps its "
        "own shape) and `iterations` out of `/imagine` or `/edit`; an option you give still "
        "wins. Change them with `/settings shape:… iterations:…`, or put the server's "
        "defaults back with `/settings reset:…`.",
    ])


def usage_defaults(lines: list[str]) -> str:
    """The part of `/usage` that names the member's defaults."""
    return "\n".join(["**Your defaults** (`/settings`)", *lines])
