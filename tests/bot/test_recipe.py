"""`bot.recipe`: the command line Info shows, quoted for a shell and a Discord code block."""

from __future__ import annotations

import shlex

import pytest

from bot.jobs import Job
from bot.recipe import reproduce_argv, shell_command
from engine.cli import build_parser

METADATA = {"seed": "3", "size": "64x48", "iterations": "9", "cutn": "4", "lr": "0.15",
            "l2": "0.75", "l2_decay": "linear", "vqgan": "tiny_vqgan", "clip": "ViT-B/32",
            "device": "cpu", "threads": "4", "software": "vqgan-clip-bot 0.1.0"}


def job(prompt: str = "a fox", **fields: object) -> Job:
    return Job(id="abcd2345", guild_id=1, channel_id=2, user_id=3, kind="imagine", prompt=prompt,
               iterations=9, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["a```b", "``````", "it's ```x```", "`a` ``b``"])
def test_a_command_never_holds_three_backticks_and_still_means_the_same(text: str) -> None:
    line = shell_command(["vqgan-clip", "imagine", text])
    assert "```" not in line
    assert shlex.split(line) == ["vqgan-clip", "imagine", text]


def test_a_command_without_three_backticks_is_plain_shlex() -> None:
    argv = ["vqgan-clip", "imagine", "a `b` c's"]
    assert shell_command(argv) == shlex.join(argv)


def test_only_recorded_settings_become_options() -> None:
    args = build_parser().parse_args(reproduce_argv(job(), METADATA)[1:])
    assert (args.seed, args.size, args.iterations, args.cutn, args.threads) == (3, (64, 48), 9, 4, 4)
    assert (args.vqgan, args.clip, args.device, args.prompt) == ("tiny_vqgan", "ViT-B/32", "cpu", "a fox")


def test_a_gpu_result_has_no_thread_count() -> None:
    on_gpu = {key: value for key, value in METADATA.items() if key != "threads"} | {"device": "cuda"}
    argv = reproduce_argv(job(), on_gpu)
    assert "--threads" not in argv and argv[argv.index("--device") + 1] == "cpu"


def test_values_and_prompts_starting_with_a_dash_are_not_taken_for_options() -> None:
    argv = reproduce_argv(job("-1 fog", input_path="inputs/abcd2345.png",
                              params={"replace": "-x", "image_prompt_path": "inputs/abcd2345-prompt.png"}),
                          METADATA)
    args = build_parser().parse_args(argv[1:])
    assert (args.command, str(args.image), args.prompt, args.replace) == (
        "edit", "inputs/abcd2345.png", "-1 fog", "-x")
    assert args.image_prompt == ["inputs/abcd2345-prompt.png"]
