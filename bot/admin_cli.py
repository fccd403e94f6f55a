"""``released conversations``: people working with the bot's conversations from a terminal.

A client of the web tier's admin API (``bot.api.admin``)::

    released conversations list [--state held|bot|all]
    released conversations show ID
    released conversations hold ID [--for 2h] [--reason "Lucía is on it"]
    released conversations release ID
    released conversations reply ID "Hola Ana, ..."

Where the API is: ``--url``, else ``RELEASED_ADMIN_URL``, else the bot ``released run`` started
on this machine (its state file), else ``http://127.0.0.1:8000`` (``kubectl port-forward``).
The token: ``--token``, else ``RELEASED_ADMIN_TOKEN``, else the local token ``released run``
made, but only for that local bot's URL (a token is never sent anywhere else).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer

DEFAULT_URL = "http://127.0.0.1:8000"
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

conversations = typer.Typer(
    no_args_is_help=True,
    help="People at work: list, show, hold, release and reply to the bot's conversations "
    "(the web tier's admin API).",
)

UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url", envvar="RELEASED_ADMIN_URL", show_default=False,
        help="The bot's web tier (default: the bot `released run` started, else "
        f"{DEFAULT_URL}, e.g. through `kubectl port-forward`).",
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="RELEASED_ADMIN_TOKEN", show_default=False,
        help="The admin token (the agent's NAME-credentials Secret, key adminToken; found by "
        "itself for `released run`).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON.")]


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _workdir() -> Path:
    from bot.cli import DEFAULT_HOME

    return DEFAULT_HOME


def _local_state() -> dict[str, Any] | None:
    from bot.devstack import StackError, read_state

    try:
        return read_state(_workdir())
    except (StackError, OSError, ValueError):
        return None


def target(url: str | None, token: str | None) -> tuple[str, str]:
    """The API's URL and the token to send (see the module doc)."""
    state = _local_state()
    local_url = state["urls"]["web"] if state else None
    url = (url or local_url or DEFAULT_URL).rstrip("/")
    if not token and state is not None and url == local_url:
        token = state.get("admin_token")
    if not token:
        _fail("no admin token: pass --token or set RELEASED_ADMIN_TOKEN (on a cluster: "
              "kubectl get secret -n NS NAME-credentials -o jsonpath='{.data.adminToken}' | "
              "base64 -d)", 2)
    return url, token


def _request(
    method: str, url: str | None, token: str | None, path: str, body: Any = None,
    timeout: float = 30.0,
) -> tuple[int, Any]:
    base, secret = target(url, token)
    try:
        response = httpx.request(
            method, f"{base}/admin{path}", json=body, timeout=timeout,
            headers={"Authorization": f"Bearer {secret}"},
        )
    except httpx.HTTPError as exc:
        _fail(f"cannot reach {base} ({type(exc).__name__}): is the bot running, or "
              "`kubectl port-forward -n NS svc/NAME-web 8000:8000`?")
    try:
        data = response.json()
    except ValueError:
        data = {"detail": response.text[:200]}
    if response.status_code == 401:
        _fail("the admin token was refused (--token, RELEASED_ADMIN_TOKEN)")
    if response.status_code == 404 and path.split("?", 1)[0] == "/conversations":
        _fail(f"{base} has no admin API: ADMIN_TOKEN is not set on its web tier (or it is "
              "not a Released bot)")
    if response.status_code >= 400:
        detail = data.get("detail") if isinstance(data, dict) else data
        _fail(f"{response.status_code}: {detail}")
    return response.status_code, data


def _when(value: str | None) -> str:
    if not value:
        return "-"
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment.strftime("%Y-%m-%d %H:%M")


def parse_duration(text: str) -> int:
    """Seconds in ``90``, ``90s``, ``30m``, ``2h`` or ``1d``."""
    match = _DURATION.match(text)
    if not match or int(match.group(1)) <= 0:
        raise typer.BadParameter(f"{text!r} is not a duration such as 90s, 30m, 2h or 1d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _state_line(conv: dict[str, Any]) -> str:
    if conv["state"] != "held":
        return "answered by the bot"
    by = f", {conv['heldBy']}" if conv.get("heldBy") else ""
    return (f"held until {_when(conv['heldUntil'])} ({conv['heldReason']}{by}); "
            f"{conv['heldMessages']} message(s) from the user since")


@conversations.command("list")
def list_(
    state: Annotated[str, typer.Option(help="held, bot or all.")] = "all",
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The conversations, the most recently active first."""
    if state not in ("held", "bot", "all"):
        raise typer.BadParameter("--state is held, bot or all")
    _, data = _request("GET", url, token, f"/conversations?state={state}&limit={limit}")
    if as_json:
        _print_json(data)
        return
    rows = data["conversations"]
    if not rows:
        typer.echo("no conversations" + ("" if state == "all" else f" ({state})"))
        return
    typer.echo(f"{'ID':>6}  {'STATE':5}  {'USER':<20}  {'NAME':<16}  {'HELD UNTIL':16}  "
               f"{'REASON':14}  {'WAITING':>7}  LAST MESSAGE")
    for c in rows:
        typer.echo(
            f"{c['id']:>6}  {c['state']:5}  {c['user'][:20]:<20}  {(c['name'] or '-')[:16]:<16}  "
            f"{_when(c['heldUntil']):16}  {(c['heldReason'] or '-'):14}  "
            f"{c['heldMessages']:>7}  {_when(c.get('lastMessageAt'))}"
        )


_WHO = {"inbound": "user"}


@conversations.command()
def show(
    conversation: Annotated[int, typer.Argument(help="The conversation's ID.")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One conversation and its stored messages, oldest first."""
    _, data = _request("GET", url, token, f"/conversations/{conversation}")
    if as_json:
        _print_json(data)
        return
    name = f" ({data['name']})" if data.get("name") else ""
    typer.echo(f"conversation {data['id']}: {data['user']}{name}")
    typer.echo(f"  {_state_line(data)}")
    window = data.get("windowOpenUntil")
    typer.echo("  you can reply until " + _when(window) if window else
               "  the 24-hour window is closed: only a template can reach the user")
    for m in data["messages"]:
        who = _WHO.get(m["direction"]) or (m["source"] or "bot")
        if who not in ("staff", "echo", "user"):
            who = f"bot/{who}"
        status = "" if m["direction"] == "inbound" else f"  [{m['status']}]"
        text = m["text"] if m["text"] is not None else f"<{m['kind']}>"
        typer.echo(f"  {_when(m['at'])}  {who:<13} {text}{status}")


@conversations.command()
def hold(
    conversation: Annotated[int, typer.Argument(help="The conversation's ID.")],
    for_: Annotated[str | None, typer.Option(
        "--for", help="How long: 90s, 30m, 2h, 1d (default: the agent's hold duration).")] = None,
    reason: Annotated[str | None, typer.Option(
        help="Who holds it or why, for the others to read.")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Take the conversation over: the bot stays silent in it until then."""
    body: dict[str, Any] = {}
    if for_ is not None:
        body["seconds"] = parse_duration(for_)
    if reason:
        body["reason"] = reason
    _, data = _request("POST", url, token, f"/conversations/{conversation}/hold", body)
    typer.echo(f"conversation {conversation}: {_state_line(data)}")


@conversations.command()
def release(
    conversation: Annotated[int, typer.Argument(help="The conversation's ID.")],
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Give the conversation back to the bot: it answers the user's next message."""
    _, data = _request("POST", url, token, f"/conversations/{conversation}/release")
    was = "" if data.get("wasHeld") else " (it was not held)"
    typer.echo(f"conversation {conversation}: answered by the bot again{was}")


@conversations.command()
def reply(
    conversation: Annotated[int, typer.Argument(help="The conversation's ID.")],
    text: Annotated[str, typer.Argument(help="What to send, as the business.")],
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Send TEXT to the user as the business (and hold the conversation: a person is talking)."""
    status, data = _request("POST", url, token, f"/conversations/{conversation}/reply",
                            {"text": text}, timeout=60.0)
    message = data.get("message", {})
    if status == 202:
        typer.echo(f"queued (message {message.get('id')}); the worker has not sent it yet: "
                   f"check with `released conversations show {conversation}`")
        return
    typer.echo(f"sent to {conversation} (message {message.get('id')}, {message.get('wamid')})")
