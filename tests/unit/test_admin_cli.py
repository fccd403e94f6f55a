"""``released conversations``: where it finds the API and the token, what it prints, and the
errors a person gets (the API itself: tests/unit/test_admin_api.py; end to end:
tests/e2e/test_handover_e2e.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

import bot.admin_cli as admin_cli
from bot.cli import app

runner = CliRunner()

CONV = {
    "id": 42, "user": "34600000001", "name": "Ana", "state": "held",
    "heldUntil": "2026-12-03T10:15:00Z", "heldSince": "2026-12-02T10:15:00Z",
    "heldReason": "user_request", "heldBy": None, "heldMessages": 2, "releasedAt": None,
    "consecutiveFallbacks": 0, "updatedAt": "2026-12-02T10:17:00Z", "messages": 3,
    "lastMessageAt": "2026-12-02T10:17:00Z", "lastInboundAt": "2026-12-02T10:17:00Z",
    "windowOpenUntil": "2026-12-03T10:17:00Z",
}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    """Every request the CLI makes, answered from ``answers`` (path -> (status, json))."""
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(admin_cli, "_workdir", lambda: tmp_path)
    monkeypatch.delenv("RELEASED_ADMIN_URL", raising=False)
    monkeypatch.delenv("RELEASED_ADMIN_TOKEN", raising=False)
    return seen


def answer_with(monkeypatch: pytest.MonkeyPatch, seen: list[dict[str, Any]],
                answers: dict[str, tuple[int, Any]]) -> None:
    def request(method: str, url: str, *, json: Any = None, headers: dict[str, str],
                timeout: float) -> httpx.Response:
        seen.append({"method": method, "url": url, "json": json, "headers": headers})
        path = url.split("/admin", 1)[1].split("?", 1)[0]
        status, body = answers[path]
        return httpx.Response(status, json=body)

    monkeypatch.setattr(admin_cli.httpx, "request", request)


def test_durations() -> None:
    assert [admin_cli.parse_duration(t) for t in ("90", "90s", "30m", "2h", "1d")] == [
        90, 90, 1800, 7200, 86400]
    for bad in ("", "0", "2w", "-5m", "soon"):
        with pytest.raises(typer.BadParameter):
            admin_cli.parse_duration(bad)


def test_without_a_token_it_says_where_to_find_one(calls: list[dict[str, Any]]) -> None:
    result = runner.invoke(app, ["conversations", "list"])
    assert result.exit_code == 2
    assert "RELEASED_ADMIN_TOKEN" in result.output and "adminToken" in result.output


def test_the_local_bot_and_its_token_are_found(
    calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "stack.json").write_text(json.dumps(
        {"urls": {"web": "http://127.0.0.1:8123"}, "phone_number_id": "1",
         "admin_token": "local-token"}))
    answer_with(monkeypatch, calls, {"/conversations": (200, {"conversations": [CONV]})})
    result = runner.invoke(app, ["conversations", "list", "--state", "held"])
    assert result.exit_code == 0, result.output
    assert calls[0]["url"] == "http://127.0.0.1:8123/admin/conversations?state=held&limit=100"
    assert calls[0]["headers"] == {"Authorization": "Bearer local-token"}
    line = result.output.splitlines()[1]
    assert line.split()[:4] == ["42", "held", "34600000001", "Ana"]
    assert "user_request" in line and "2026-12-03 10:15" in line
    # Another URL never gets the local token.
    other = runner.invoke(app, ["conversations", "list", "--url", "https://elsewhere"])
    assert other.exit_code == 2 and len(calls) == 1


def test_show_hold_release_reply_print_what_happened(
    calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELEASED_ADMIN_TOKEN", "t0ken")
    shown = dict(CONV, heldBy="Lucía", messages=[
        {"direction": "inbound", "kind": "text", "text": "Quiero una persona", "source": None,
         "status": "received", "at": "2026-12-02T10:15:00Z"},
        {"direction": "outbound", "kind": "text", "text": "Thanks! I've passed…",
         "source": "handover", "status": "read", "at": "2026-12-02T10:15:01Z"},
        {"direction": "outbound", "kind": "text", "text": "Hola Ana", "source": "staff",
         "status": "sent", "at": "2026-12-02T10:16:00Z"},
        {"direction": "inbound", "kind": "image", "text": None, "source": None,
         "status": "received", "at": "2026-12-02T10:17:00Z"},
    ])
    answer_with(monkeypatch, calls, {
        "/conversations/42": (200, shown),
        "/conversations/42/hold": (200, dict(CONV, heldReason="admin", heldBy="Lucía")),
        "/conversations/42/release": (200, dict(CONV, state="bot", wasHeld=True)),
        "/conversations/42/reply": (200, {"message": {"id": 7, "wamid": "wamid.X"}}),
        "/conversations/43/reply": (202, {"message": {"id": 8}}),
    })
    out = runner.invoke(app, ["conversations", "show", "42"]).output
    assert "conversation 42: 34600000001 (Ana)" in out
    assert "held until 2026-12-03 10:15 (user_request, Lucía)" in out
    assert "you can reply until 2026-12-03 10:17" in out
    assert "user          Quiero una persona" in out
    assert "bot/handover" in out and "staff         Hola Ana  [sent]" in out
    assert "<image>" in out

    out = runner.invoke(app, ["conversations", "hold", "42", "--for", "2h",
                              "--reason", "Lucía"]).output
    assert calls[-1]["json"] == {"seconds": 7200, "reason": "Lucía"}
    assert "(admin, Lucía)" in out
    assert "answered by the bot again" in runner.invoke(
        app, ["conversations", "release", "42"]).output
    out = runner.invoke(app, ["conversations", "reply", "42", "Hola"]).output
    assert calls[-1]["json"] == {"text": "Hola"} and "sent to 42 (message 7, wamid.X)" in out
    assert "queued" in runner.invoke(app, ["conversations", "reply", "43", "Hi"]).output
    js = runner.invoke(app, ["conversations", "show", "42", "--json"]).output
    assert json.loads(js)["heldBy"] == "Lucía"


def test_errors_are_sentences(calls: list[dict[str, Any]],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELEASED_ADMIN_TOKEN", "t0ken")
    answer_with(monkeypatch, calls, {
        "/conversations": (404, {"detail": "Not Found"}),
        "/conversations/1": (401, {"detail": "a valid admin token is required"}),
        "/conversations/2/reply": (409, {"detail": "more than 24 hours since ..."}),
    })
    out = runner.invoke(app, ["conversations", "list"])
    assert out.exit_code == 1 and "has no admin API" in out.output
    out = runner.invoke(app, ["conversations", "show", "1"])
    assert "admin token was refused" in out.output
    out = runner.invoke(app, ["conversations", "reply", "2", "hi"])
    assert out.exit_code == 1 and "409: more than 24 hours" in out.output
    out = runner.invoke(app, ["conversations", "list", "--state", "nope"])
    assert out.exit_code == 2

    def unreachable(*_: Any, **__: Any) -> httpx.Response:
        raise httpx.ConnectError("refused")

    monkeypatch.setattr(admin_cli.httpx, "request", unreachable)
    out = runner.invoke(app, ["conversations", "list", "--url", "http://127.0.0.1:9"])
    assert out.exit_code == 1 and "kubectl port-forward" in out.output
