"""What users read: every text and embed the bot shows, in one place.

Issue 11's rule: "Every user-visible string goes through one rendering module." This is
that module. Callers write `from bot import render` and `render.queue_full(...)`, raise
a `UserError` with a text from here, or send an embed built here; the wording lives
nowhere else. Pure functions from plain data to text and `discord.Embed`s, so tests check
the wording without a running bot. User text shown back (prompts, phrases, file names)
goes through `user_text` or `quoted`: Markdown escaped, mentions defused.

What counts: everything Discord shows of the bot's own making, in messages, answers,
embeds, refusals (`UserError`s), buttons, modals, the failure text a job keeps
(`Job.error`), and the sandbox page's topic and welcome.
`tests/test_user_text_in_render.py` reads `bot/` and `cogs/` and fails on a literal text in
any of those places outside this package. One exemption: the *command metadata*
registered with Discord (command and group names and descriptions,
`app_commands.describe`, option choices, the "Edit image" menu's name) stays in the
decorators and cogs that define the commands, since Discord holds it as the command's
definition (`tests/test_command_docs.py` reads it there). Not users' texts at all, so not
here: log messages, the operator's terminal (the CLI's output, configuration errors), and
exceptions that are not `UserError`s (users read `apology` for those).

One module per feature, re-exported here, in this order:
- `text`: the pieces every text is made of (user text made safe, times, links, colours);
- `job_messages`: a job's message in the channel, and the answer that it was queued;
- `refusals`: refusals of requests (the prompt, sizes, the queue, permissions), and the
  apology for a bug;
- `attachments`: refusals of uploaded images;
- `edit_source`: which image an edit starts from;
- `buttons`: the job buttons' labels and emoji, the edit modal, and what the buttons answer
  (Cancel, Info, Timelapse, Retry);
- `your_jobs`: `/jobs` and `/cancel`;
- `help`, `queue`: `/help` and `/queue`;
- `settings`: `/settings`, members' own defaults;
- `quotas`: the refusal when a quota is used up, `/usage`, and the admins' `/quota`;
- `status`, `blocklist`, `stats`: the admins' `/status`, `/blocklist` and `/stats`;
- `sandbox`: the sandbox page's channel topic and welcome (`vqgan-clip-bot --sandbox`).

The modules under `bot.render` import only plain data (`bot.jobs`, `bot.quota_status`,
`bot.engine_status`, `bot.worker_status`, the figures of `bot.stats`) and discord, never the services or the
cogs: everything may import them, so they must import nothing that could import them back.
"""

from __future__ import annotations

# ---- the pieces every text is made of
from bot.render.text import (
    COLOUR_CANCELLED,
    COLOUR_DONE,
    COLOUR_FAILED,
    COLOUR_QUEUED,
    COLOUR_RUNNING,
    FIELD_LIMIT,
    JOB_STATUS_WORDS,
    STARTING,
    TITLE_LIMIT,
    discord_relative_time,
    format_duration,
    message_link,
    quoted,
    user_text,
)

# ---- a job's message, and the answer that it was queued
from bot.render.job_messages import (
    BAR_WIDTH,
    ENGINE_DOWN_TEXT,
    ENGINE_CRASHED,
    ENGINE_SHUT_DOWN,
    INPUT_IMAGE_GONE,
    JOB_NOT_POSTED,
    NOT_RESUMED_TEXT,
    REPLACE_LIMIT,
    apology_embed,
    cancelled_embed,
    describe_done,
    describe_kind,
    engine_refused,
    failed_content,
    failed_embed,
    internal_error,
    interrupted_embed,
    job_link,
    job_not_sent,
    not_charged,
    progress_bar,
    progress_embed,
    queued_answer,
    queued_embed,
    ready_content,
    requester_content,
    result_embed,
    size_text,
    started_embed,
    waiting_for_engine_embed,
)

# ---- refusals of requests, and the apology for a bug
from bot.render.refusals import (
    CANNOT_POST_JOB,
    DISCORD_FAILED_TO_POST_JOB,
    GUILD_ONLY,
    NOT_ADMIN,
    REPLACE_ONLY_SPACES,
    STORED_IMAGE_GONE,
    apology,
    iterations_out_of_range,
    prompt_unusable,
    queue_full,
    queue_full_for_user,
    replace_too_long,
    seed_unusable,
)

# ---- uploaded images
from bot.render.attachments import (
    IMAGE_FORMATS,
    attachment_far_too_many_pixels,
    attachment_not_an_image,
    attachment_not_downloaded,
    attachment_too_large,
    attachment_too_many_pixels,
    attachment_unreadable,
    attachment_wrong_format,
    file_name,
)

# ---- which image an edit starts from
from bot.render.edit_source import (
    HIDDEN_IMAGES_MESSAGE,
    NO_IMAGE_IN_MESSAGE,
    NO_IMAGE_MESSAGE,
    hidden_images,
    preview_not_editable,
    source_embed,
)

# ---- the job buttons and the edit modal
from bot.render.buttons import (
    CANCEL_EMOJI,
    CANCEL_LABEL,
    CANNOT_POST_TIMELAPSE,
    EDIT_EMOJI,
    EDIT_LABEL,
    EDIT_MODAL_TITLE,
    EDIT_PROMPT_LABEL,
    EDIT_PROMPT_PLACEHOLDER,
    EDIT_REPLACE_LABEL,
    EDIT_REPLACE_PLACEHOLDER,
    EDIT_VERB,
    INFO_EMOJI,
    INFO_LABEL,
    INFO_VERB,
    REROLL_EMOJI,
    REROLL_LABEL,
    RETRY_EMOJI,
    RETRY_LABEL,
    RETRY_SMALLER_EMOJI,
    RETRY_SMALLER_LABEL,
    TIMELAPSE_EMOJI,
    TIMELAPSE_LABEL,
    TIMELAPSE_VERB,
    VARY_EMOJI,
    VARY_LABEL,
    VARY_VERB,
    cancel_too_late,
    info_embed,
    job_forgotten,
    no_result_text,
    no_timelapse_text,
    not_retryable,
    only_requester_cancels,
    result_missing_text,
    retry_smaller_label,
    timelapse_already_text,
    timelapse_busy_text,
    timelapse_post_text,
    timelapse_posted_text,
)

# ---- /jobs and /cancel
from bot.render.your_jobs import (
    CHOICE_NAME_LIMIT,
    JOBS_LIMIT,
    JOBS_PROMPT_CHARS,
    already_ended,
    already_finished,
    cancel_label,
    cancel_lost_race,
    cancelled,
    cancelled_before_start,
    job_choice_name,
    job_line,
    job_status_text,
    jobs_embed,
    no_job_to_cancel,
    no_record_of_job,
    not_your_job,
    stopping,
    unknown_job,
)

# ---- /help and /queue
from bot.render.help import (
    HELP_ADMIN_FIELD,
    HELP_DESCRIPTION,
    HELP_FIELDS,
    HELP_TITLE,
    help_embed,
)
from bot.render.queue import (
    PROMPT_PREVIEW_CHARS,
    QUEUE_EMPTY,
    RunningNow,
    YourWaitingJob,
    queue_text,
)

# ---- /settings: members' own defaults
from bot.render.settings import (
    SHAPE_LABELS,
    member_defaults_lines,
    settings_iterations_out_of_range,
    settings_reset_conflict,
    settings_text,
    usage_defaults,
)

# ---- quotas: the refusal, /usage, /quota (admins)
from bot.render.quotas import (
    QUOTA_CHOOSE_ONE,
    QUOTA_SOURCE_TEXT,
    SHOW_MAX_OVERRIDES,
    describe_limit,
    limit_with_source,
    member_quota,
    quota_default_reset,
    quota_default_set,
    quota_exceeded,
    quota_reset,
    quota_set,
    quota_status_text,
    role_not_unlimited,
    role_unlimited,
    server_default_quota,
    server_quotas,
    usage_text,
)

# ---- /status (admins)
from bot.render.status import (
    ENGINE_STATE_WORDS,
    STATUS_COLOURS,
    STATUS_ERROR_LIMIT,
    STATUS_RUNNING_LIMIT,
    STATUS_WORKERS_LIMIT,
    code_block,
    status_embed,
    status_running_line,
    status_worker_line,
    utc_day_start,
)

# ---- /blocklist (admins) and the blocked prompt's refusal
from bot.render.blocklist import (
    BLOCKLIST_LIST_CHARS,
    BLOCKLIST_NO_TERMS,
    blocklist_added,
    blocklist_full,
    blocklist_list,
    blocklist_removed,
    blocklist_term_too_long,
    blocklist_term_without_words,
    prompt_blocked,
)

# ---- /stats (admins)
from bot.render.stats import (
    FAILURE_CAUSES,
    STATS_BAR_WIDTH,
    failure_cause,
    stat_duration,
    stats_embed,
)

# ---- the sandbox page (vqgan-clip-bot --sandbox)
from bot.render.sandbox import (
    sandbox_topic,
    sandbox_welcome,
)
