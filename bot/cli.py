"""``released``: the command-line tool for people.

- ``released run``        the whole bot on this machine on embedded defaults (SQLite, a Redis
                          server started for you, local fakes of Meta and OpenAI unless real
                          credentials are set).
- ``released say TEXT``   talk to the running bot as a WhatsApp user: signs and posts a webhook,
                          prints what the Graph API was asked to send back.
- ``released migrate``    apply the database migrations to ``DATABASE_URL``.
- ``released purge``      delete what is older than ``RETENTION_DAYS`` (the agent's retention
                          CronJob runs it hourly; it exits when done).
- ``released provision``  print (or apply) a complete WhatsAppAgent with its Secret templates.
- ``released conversations list|show|hold|release|reply``  people taking conversations over
                          from the bot, through the web tier's admin API (``bot.admin_cli``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from bot.admin_cli import conversations

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Released: WhatsApp Business bots on Kubernetes.",
)
app.add_typer(conversations, name="conversations")

DEFAULT_HOME = Path(os.environ.get("RELEASED_HOME", Path.home() / ".cache" / "released" / "run"))
WorkdirOpt = Annotated[Path, typer.Option(help="Where the local bot keeps its state and logs.")]


def _real_credentials() -> bool:
    return bool(os.environ.get("META_ACCESS_TOKEN") and os.environ.get("OPENAI_API_KEY"))


@app.command()
def run(
    port: Annotated[int, typer.Option(help="Port of the web tier (webhook).")] = 8000,
    workdir: WorkdirOpt = DEFAULT_HOME,
    fakes: Annotated[
        bool | None,
        typer.Option(
            help="Use the local fakes of Meta and OpenAI (default: unless META_ACCESS_TOKEN and "
            "OPENAI_API_KEY are set)."
        ),
    ] = None,
) -> None:
    """Run the bot here: web tier, Celery worker, Redis, SQLite; the retention purge hourly."""
    from bot.devstack import LocalStack, StackError

    use_fakes = (not _real_credentials()) if fakes is None else fakes
    stack = LocalStack(workdir=workdir, web_port=port, use_fakes=use_fakes)
    typer.echo(
        "Starting Redis, the web tier and a Celery worker"
        + (" and local fakes of Meta and OpenAI" if use_fakes else "")
        + " ..."
    )
    try:
        stack.start()
    except StackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    web = stack.urls["web"]
    typer.echo(f"""
Released is running.
  webhook      {web}/webhook   (verify token: $META_VERIFY_TOKEN or the local default)
  health       {web}/healthz  {web}/readyz
  metrics      {web}/metrics
  admin API    {web}/admin/conversations   (`released conversations list`; token in the state
               file {workdir}/stack.json)
  redis        {stack.urls["redis"]}  ({stack.redis_binary})
  graph API    {stack.env.get("META_GRAPH_URL", "Meta (real)")}
  OpenAI       {stack.env.get("OPENAI_BASE_URL", "OpenAI (real)")}
  logs         {workdir}/*.log

Talk to it from another shell:  released say "¿Qué es Released?"
Take a conversation over:       released conversations list / show / hold / reply / release
Stop with Ctrl-C.""")
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stopping:
            try:
                for name in stack.supervise():
                    typer.echo(f"{name} exited; restarted it (see {workdir / (name + '.log')})",
                               err=True)
            except StackError as exc:
                typer.echo(f"error: {exc}", err=True)
                stopping = True
            time.sleep(0.5)
    finally:
        typer.echo("Stopping ...")
        stack.stop()


@app.command()
def say(
    text: Annotated[str, typer.Argument(help="What the WhatsApp user writes.")],
    sender: Annotated[str, typer.Option("--from", help="The user's WhatsApp ID.")] = "34600000001",
    name: Annotated[str, typer.Option(help="The user's profile name.")] = "Test User",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the reply.")] = 30.0,
    workdir: WorkdirOpt = DEFAULT_HOME,
) -> None:
    """Send a message to the running bot as a WhatsApp user and print its reply."""
    from bot.devstack import StackError, read_state
    from bot.whatsapp.simulate import new_wamid, signed_delivery, text_message_payload

    try:
        state = read_state(workdir)
    except StackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    app_secret = os.environ.get("META_APP_SECRET") or state.get("app_secret")
    if not app_secret:
        typer.echo("error: set META_APP_SECRET to sign the webhook", err=True)
        raise typer.Exit(1)
    wamid = new_wamid()
    payload = text_message_payload(
        state["phone_number_id"], text, wa_id=sender, name=name, wamid=wamid
    )
    body, headers = signed_delivery(payload, app_secret)
    response = httpx.post(
        f"{state['urls']['web']}/webhook", content=body, headers=headers, timeout=10
    )
    if response.status_code != 200:
        typer.echo(f"error: the webhook answered {response.status_code}: {response.text}", err=True)
        raise typer.Exit(1)
    fake_meta = state["urls"].get("fake_meta")
    if not fake_meta:
        typer.echo(f"Delivered {wamid}; the reply goes to Meta's real Graph API.")
        return
    reply = _wait_for_reply(fake_meta, wamid, timeout)
    if reply is None:
        typer.echo(f"error: no reply within {timeout}s; see {workdir}/worker.log", err=True)
        raise typer.Exit(1)
    typer.echo(reply)


def _wait_for_reply(fake_meta: str, wamid: str, timeout: float) -> str | None:
    """Poll the fake Graph API for the message sent in reply to ``wamid``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sent: list[dict[str, Any]] = httpx.get(f"{fake_meta}/_fake/sent", timeout=5).json()
        for message in sent:
            if message.get("context_message_id") == wamid:
                return str(message.get("text") or message.get("body"))
        time.sleep(0.2)
    return None


@app.command()
def migrate() -> None:
    """Apply the database migrations to DATABASE_URL (idempotent)."""
    from bot.core.config import get_settings
    from bot.storage.db import run_migrations

    run_migrations(get_settings())
    typer.echo("database is at the latest revision")


@app.command()
def purge(
    days: Annotated[int | None, typer.Option(
        min=1, help="Delete what is older than this many days (default: RETENTION_DAYS).")] = None,
) -> None:
    """Delete messages older than RETENTION_DAYS from DATABASE_URL, then exit."""
    import asyncio

    from bot.core.config import get_settings
    from bot.core.logging import configure_logging
    from bot.retention import purge_once

    settings = get_settings()
    configure_logging(settings)
    try:
        asyncio.run(purge_once(settings, days))
    except Exception as exc:  # the Job fails and is retried; the log says why, no secrets
        logging.getLogger("bot.retention").error("purge failed: %s", exc)
        raise typer.Exit(1) from None


@app.command()
def provision(
    name: Annotated[str, typer.Argument(help="Agent name (a DNS label), e.g. the client's name.")],
    phone: Annotated[str, typer.Argument(
        help="Meta's Phone Number ID (digits), or the number itself in E.164 (+...) together "
             "with --phone-number-id.")],
    phone_number_id: Annotated[str | None, typer.Option(
        help="Meta's Phone Number ID, when PHONE is the E.164 number.")] = None,
    namespace: Annotated[str, typer.Option(help="Namespace of the agent.")] = "default",
    faq: Annotated[
        list[str] | None, typer.Option(help="An FAQ as 'question=answer' (repeat).")
    ] = None,
    faqs_file: Annotated[
        Path | None, typer.Option(help="YAML/JSON list of {q, a} to embed.")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Public host of the webhook Ingress.")] = None,
    register_webhook: Annotated[
        bool, typer.Option(help="Let the operator set Meta's callback URL override.")
    ] = False,
    display_phone_number: Annotated[str | None, typer.Option(
        help="The number in E.164, for people reading the manifest.")] = None,
    business_account_id: Annotated[str | None, typer.Option(
        help="The WhatsApp Business Account ID (digits): the operator then checks that the "
             "Meta app is subscribed to it and subscribes it when not.")] = None,
    model: Annotated[str | None, typer.Option(
        help="The OpenAI model (default: a current low-cost model with no announced "
             "shutdown).")] = None,
    secrets: Annotated[bool, typer.Option(
        help="Include the two Secret templates (REPLACE_ME values); --no-secrets when they "
             "already exist, so applying does not overwrite them.")] = True,
    apply: Annotated[
        bool, typer.Option(help="Pipe the manifests to `kubectl apply -f -`.")
    ] = False,
) -> None:
    """Print a complete WhatsAppAgent and its Secret templates (replaces provision_client.sh)."""
    from released.agent.provision import ProvisionError, render_manifests

    if phone.startswith("+"):
        display_phone_number = display_phone_number or phone
        if not phone_number_id:
            typer.echo(
                f"error: {phone} is the phone number; the agent needs Meta's Phone Number ID "
                "(digits), shown in the App Dashboard under WhatsApp > API Setup. Pass it with "
                "--phone-number-id.", err=True)
            raise typer.Exit(2)
    else:
        phone_number_id = phone_number_id or phone
    try:
        text = render_manifests(
            name=name,
            namespace=namespace,
            phone_number_id=phone_number_id,
            faqs=faq or [],
            faqs_file=faqs_file,
            host=host,
            register_webhook=register_webhook,
            display_phone_number=display_phone_number,
            business_account_id=business_account_id,
            **({"model": model} if model else {}),
            with_secrets=secrets,
        )
    except ProvisionError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not apply:
        typer.echo(text, nl=False)
        return
    result = subprocess.run(["kubectl", "apply", "-f", "-"], input=text, text=True, check=False)
    raise typer.Exit(result.returncode)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="released")


if __name__ == "__main__":  # pragma: no cover - ``python -m bot.cli``
    main()
