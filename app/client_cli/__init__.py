"""`tuna files|jobs|evals|models|webhooks|chat`: the client side of the `tuna` command, over HTTP to
any Tuna server.

Registered on the `tuna` group in `app.cli`; nothing here imports the server (no database,
no torch), so these commands start fast and work against a remote server.
"""

from __future__ import annotations

from app.client_cli.chat import chat
from app.client_cli.evals import evals
from app.client_cli.files import files
from app.client_cli.jobs import jobs
from app.client_cli.models import models
from app.client_cli.webhooks import webhooks

COMMANDS = (files, jobs, evals, models, webhooks, chat)

__all__ = ["COMMANDS", "chat", "evals", "files", "jobs", "models", "webhooks"]
