"""``released provision`` and ``hack/provision_client.sh``: what a platform engineer pastes."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from bot.cli import app

REPO = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((REPO / "crds" / "whatsappagent.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

runner = CliRunner()


def provision(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["provision", *args])
    return result.exit_code, result.stdout, result.stderr


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_provision_prints_secrets_and_an_agent_the_crd_accepts(tmp_path: Path) -> None:
    faqs = tmp_path / "faqs.yaml"
    faqs.write_text("- q: Where are you?\n  a: Calle Mayor 1, Madrid.\n")
    code, out, err = provision(
        "acme", "106540352242922", "--namespace", "clients", "--faq", "When are you open?=9-18",
        "--faqs-file", str(faqs), "--host", "acme.bots.example.com", "--register-webhook",
    )
    assert code == 0, err
    secret_meta, secret_openai, agent = documents(out)
    assert secret_meta["kind"] == secret_openai["kind"] == "Secret"
    assert set(secret_meta["stringData"]) == {"accessToken", "appSecret"}
    assert set(secret_openai["stringData"]) == {"apiKey"}
    assert agent["kind"] == "WhatsAppAgent" and agent["metadata"]["namespace"] == "clients"
    jsonschema.Draft4Validator(SCHEMA).validate(agent)  # OpenAPI 3.0 is draft-4 shaped
    assert agent["spec"]["secrets"] == {"meta": {"name": "acme-meta"},
                                        "openai": {"name": "acme-openai"}}
    assert [f["q"] for f in agent["spec"]["faqs"]] == ["When are you open?", "Where are you?"]
    assert agent["spec"]["ingress"]["webhook"]["register"] is True
    # The model is written out: the default has no announced shutdown.
    from released.providers.openai import shutdown_date

    assert agent["spec"]["assistant"] == {"model": "gpt-6-luna"}
    assert shutdown_date(agent["spec"]["assistant"]["model"]) is None
    # The schema check above has teeth: the same agent with a bad ID is refused.
    agent["spec"]["phoneNumberId"] = "+34 600"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(SCHEMA).validate(agent)


def test_provision_takes_the_waba_and_a_model() -> None:
    code, out, err = provision(
        "acme", "106540352242922", "--faq", "a=b", "--business-account-id", "102290129340398",
        "--model", "gpt-5.4-nano",
    )
    assert code == 0, err
    agent = documents(out)[-1]
    assert agent["spec"]["businessAccountId"] == "102290129340398"
    assert agent["spec"]["assistant"]["model"] == "gpt-5.4-nano"
    jsonschema.Draft4Validator(SCHEMA).validate(agent)
    code, _, err = provision("acme", "106540352242922", "--faq", "a=b",
                             "--business-account-id", "WABA")
    assert code == 2 and "businessAccountId" in err


def test_an_e164_number_needs_the_phone_number_id() -> None:
    code, _, err = provision("demo", "+123456789", "--faq", "a=b")
    assert code == 2
    assert "Phone Number ID" in err and "--phone-number-id" in err

    code, out, _ = provision("demo", "+123456789", "--phone-number-id", "106540352242922",
                             "--faq", "a=b")
    assert code == 0
    agent = documents(out)[-1]
    assert agent["spec"]["displayPhoneNumber"] == "+123456789"
    assert agent["spec"]["phoneNumberId"] == "106540352242922"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Demo_1", "1065403", "--faq", "a=b"], "lower-case"),
        # The operator's rule for agent names (released.agent.naming.validate_name):
        (["1demo", "1065403", "--faq", "a=b"], "starting with a letter"),
        (["d" * 47, "1065403", "--faq", "a=b"], "at most 46"),
        (["demo", "1065403"], "at least one FAQ"),
        (["demo", "1065403", "--faq", "no equals sign"], "question=answer"),
        (["demo", "1065403", "--faq", "Hours?=9", "--faq", "hours? =10"], "duplicates"),
        (["demo", "1065403", "--faq", "a=b", "--register-webhook"], "--host"),
        (["demo", "12ab", "--faq", "a=b"], "phoneNumberId"),
    ],
)
def test_bad_arguments_get_a_clear_error(args: list[str], message: str) -> None:
    code, out, err = provision(*args)
    assert code == 2
    assert message in err
    assert out == ""


def test_old_wrapper_script_still_works() -> None:
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "provision_client.sh"), "demo", "+123456789",
         "--phone-number-id", "106540352242922", "--faq", "Hi?=Hello!"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    agent = documents(result.stdout)[-1]
    jsonschema.Draft4Validator(SCHEMA).validate(agent)  # OpenAPI 3.0 is draft-4 shaped


def test_no_secrets_prints_only_the_agent() -> None:
    code, out, _ = provision("demo", "1065403", "--faq", "a=b", "--no-secrets")
    assert code == 0
    assert [d["kind"] for d in documents(out)] == ["WhatsAppAgent"]
    assert "REPLACE_ME" not in out
