"""The platform's policy for tenants' agents (released.agent.policy): what a spec may ask for."""

from __future__ import annotations

from typing import Any

import pytest

from released.agent.policy import (
    Policy,
    TierBounds,
    check_ingress,
    check_meta_secret,
    check_openai_base_url,
    check_policy,
    check_resolved_addresses,
    check_resources,
)
from released.agent.spec import AgentSpec

NS = "acme"
PLATFORM = Policy(
    ingress_annotations=("cert-manager.io/cluster-issuer", "nginx.ingress.kubernetes.io/proxy-*"),
    ingress_classes=("public",),
    ingress_host_suffixes=("{namespace}.bots.example.com", "shared.example.net"),
    openai_base_urls=("https://llm.example.com/v1",),
    storage_classes=("fast",),
)


def spec(**fields: Any) -> AgentSpec:
    body: dict[str, Any] = {
        "phoneNumberId": "1234567890",
        "faqs": [{"q": "Hours?", "a": "9 to 5."}],
        "secrets": {"meta": {"name": "meta"}, "openai": {"name": "openai"}},
    }
    body.update(fields)
    return AgentSpec.from_resource(body)


def ingress(**fields: Any) -> AgentSpec:
    return spec(ingress={"host": "bot.acme.bots.example.com", **fields})


# -- ingress --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "acme.bots.example.com",
        "bot.acme.bots.example.com",
        "a.b.shared.example.net",
        "BOT.acme.bots.example.com",
    ],
)
def test_hosts_under_the_namespace_suffix_are_accepted(host: str) -> None:
    assert check_ingress(spec(ingress={"host": host.lower()}), PLATFORM, NS) == []


@pytest.mark.parametrize(
    "host",
    [
        "bot.other.bots.example.com",  # another tenant's suffix
        "evilacme.bots.example.com",  # a suffix match without the dot
        "api.example.com",  # the company's own name
        "bots.example.com",
    ],
)
def test_foreign_hosts_are_refused_with_the_allowed_suffixes(host: str) -> None:
    (problem,) = check_ingress(spec(ingress={"host": host}), PLATFORM, NS)
    assert problem.startswith(f"spec.ingress.host {host!r}")
    assert "*.acme.bots.example.com" in problem and "*.shared.example.net" in problem


def test_per_namespace_suffixes_match_nothing_without_a_namespace() -> None:
    (problem,) = check_ingress(spec(ingress={"host": "acme.bots.example.com"}), PLATFORM, "")
    assert "*.shared.example.net" in problem and "bots.example.com or" not in problem


def test_without_host_suffixes_no_host_is_allowed_and_the_platform_is_named() -> None:
    (problem,) = check_ingress(ingress(), Policy(), NS)
    assert "ingress.hostSuffixes" in problem and "platform team" in problem
    assert check_ingress(ingress(), Policy(ingress_host_suffixes=("*",)), NS) == []


@pytest.mark.parametrize(
    "key",
    [
        "nginx.ingress.kubernetes.io/configuration-snippet",
        "nginx.ingress.kubernetes.io/server-snippet",
        "nginx.ingress.kubernetes.io/auth-url",
        "nginx.ingress.kubernetes.io/auth-snippet",
        "nginx.ingress.kubernetes.io/rewrite-target",
        "kubernetes.io/ingress.class",
    ],
)
def test_annotations_outside_the_allowlist_are_refused(key: str) -> None:
    (problem,) = check_ingress(ingress(annotations={key: "x"}), PLATFORM, NS)
    assert repr(key) in problem and "remove them" in problem


def test_allowed_annotations_pass_and_snippets_never_do() -> None:
    allowed = {
        "cert-manager.io/cluster-issuer": "letsencrypt",
        "nginx.ingress.kubernetes.io/proxy-body-size": "1m",
    }
    assert check_ingress(ingress(annotations=allowed), PLATFORM, NS) == []
    everything = Policy(ingress_annotations=("*",), ingress_host_suffixes=("*",))
    (problem,) = check_ingress(
        ingress(annotations={"nginx.ingress.kubernetes.io/configuration-snippet": "x"}),
        everything,
        NS,
    )
    assert "configuration-snippet" in problem
    (default,) = check_ingress(
        ingress(annotations=allowed), Policy(ingress_host_suffixes=("*",)), NS
    )
    assert "allows no Ingress annotations" in default


def test_ingress_class_must_be_allowed() -> None:
    assert check_ingress(ingress(className="public"), PLATFORM, NS) == []
    (problem,) = check_ingress(ingress(className="internal"), PLATFORM, NS)
    assert "'internal'" in problem and "'public'" in problem
    (default,) = check_ingress(
        ingress(className="public"), Policy(ingress_host_suffixes=("*",)), NS
    )
    assert "default IngressClass" in default


# -- resources and storage ------------------------------------------------------------------


def test_the_defaults_fit_the_default_bounds_even_at_the_largest_concurrency() -> None:
    assert check_resources(spec(), Policy()) == []
    assert check_resources(spec(worker={"concurrency": 64, "replicas": 20}), Policy()) == []


def test_requests_and_limits_above_the_bounds_are_refused() -> None:
    problems = check_resources(
        spec(
            web={"resources": {"requests": {"cpu": "64"}, "limits": {"cpu": "64", "memory": "1Ti"}}}
        ),
        Policy(),
    )
    assert problems == [
        "spec.web.resources.requests.cpu 64 is more than the platform's maximum 2: "
        "lower spec.web.resources",
        "spec.web.resources.limits.cpu 64 is more than the platform's maximum 2: "
        "lower spec.web.resources",
        "spec.web.resources.limits.memory 1Ti is more than the platform's maximum 2Gi: "
        "lower spec.web.resources",
    ]


def test_unlisted_resources_and_missing_memory_limits_are_refused() -> None:
    problems = check_resources(
        spec(worker={"resources": {"requests": {"memory": "1Gi", "nvidia.com/gpu": "1"}}}),
        Policy(),
    )
    assert any("'nvidia.com/gpu'" in p and "remove it" in p for p in problems)
    assert any(
        p.startswith("spec.worker.resources.limits.memory is missing") and "8Gi" in p
        for p in problems
    )


def test_a_default_that_grows_with_concurrency_is_bounded_too() -> None:
    # The worker's default memory grows with its concurrency (released.agent.resources):
    # 376Mi / 504Mi at 64 tasks at once.
    tight = Policy(resources={"worker": TierBounds(max={"cpu": "1", "memory": "256Mi"})})
    problems = check_resources(spec(worker={"concurrency": 64}), tight)
    assert problems and all("spec.worker.concurrency=64" in p for p in problems)
    assert check_resources(spec(worker={"concurrency": 2}), tight) == []


def test_replicas_are_bounded() -> None:
    tight = Policy(resources={"web": TierBounds(max={"memory": "1Gi", "cpu": "1"}, max_replicas=2)})
    (problem,) = check_resources(spec(web={"replicas": 5}), tight)
    assert problem == "spec.web.replicas 5 is more than the platform allows (2): lower it"


def test_redis_storage_size_and_class_are_bounded() -> None:
    problems = check_resources(
        spec(redis={"storage": "2Ti", "storageClassName": "premium-unlimited"}), PLATFORM
    )
    assert problems == [
        "spec.redis.storage 2Ti is more than the platform's maximum 10Gi: lower it",
        "spec.redis.storageClassName 'premium-unlimited' is not allowed here: "
        "use one of 'fast' or remove it",
    ]
    assert (
        check_resources(spec(redis={"storage": "5Gi", "storageClassName": "fast"}), PLATFORM) == []
    )


def test_check_policy_collects_every_part() -> None:
    problems = check_policy(
        spec(
            ingress={"host": "x.example.org", "className": "internal"},
            redis={"storage": "1Pi"},
        ),
        PLATFORM,
        NS,
    )
    assert len(problems) == 3


# -- Meta Secret ----------------------------------------------------------------------------

GOOD_SECRET = "0123456789abcdef0123456789abcdef"


def test_a_real_looking_app_secret_passes() -> None:
    assert (
        check_meta_secret({"accessToken": "EAAG" + "x" * 40, "appSecret": GOOD_SECRET}, "m") == []
    )


@pytest.mark.parametrize(
    "data",
    [
        {"accessToken": "REPLACE_ME", "appSecret": GOOD_SECRET},
        {"accessToken": "EAAGxyz", "appSecret": "REPLACE_ME"},
        {"accessToken": "EAAGxyz", "appSecret": "my-app-secret"},
        {"accessToken": "EAAGxyz", "appSecret": "0123456789abcdef0123456789abcdeg"},
        {"accessToken": "EAAGxyz", "appSecret": GOOD_SECRET + "00"},
    ],
)
def test_placeholders_and_implausible_app_secrets_are_refused_without_quoting_them(
    data: dict[str, str],
) -> None:
    problems = check_meta_secret(data, "acme-meta")
    assert problems and all("'acme-meta'" in p for p in problems)
    for value in data.values():
        if value != "REPLACE_ME":
            assert not any(value in p for p in problems)


# -- OpenAI base URL ------------------------------------------------------------------------

DEFAULT = "https://api.openai.com/v1"


def test_the_platform_default_needs_no_allowlist() -> None:
    assert check_openai_base_url(DEFAULT, Policy(), default_url=DEFAULT) == []
    assert check_openai_base_url(DEFAULT + "/", Policy(), default_url=DEFAULT) == []


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("https://llm.example.com/v1", None),
        ("https://llm.example.com/v1/", None),
        ("https://llm.example.com/v1/sub", None),
        ("https://llm.example.com/v10", "not an allowed base URL"),
        ("https://llm.example.com:8443/v1", "not an allowed base URL"),
        ("http://llm.example.com/v1", "https://"),
        ("https://user:pw@llm.example.com/v1", "credentials"),
        ("https://attacker.example.org/v1", "not an allowed base URL"),
        ("gopher://llm.example.com/v1", "https://"),
    ],
)
def test_base_urls_must_be_https_and_allowlisted(url: str, fragment: str | None) -> None:
    problems = check_openai_base_url(url, PLATFORM, default_url=DEFAULT)
    if fragment is None:
        assert problems == []
    else:
        (problem,) = problems
        assert fragment in problem


def test_without_an_allowlist_only_the_default_is_allowed() -> None:
    (problem,) = check_openai_base_url("https://llm.example.com/v1", Policy(), default_url=DEFAULT)
    assert "openai.allowedBaseUrls" in problem


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.5",
        "172.20.1.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.100.100.200",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:10.0.0.5",
        "0.0.0.0",
        "224.0.0.1",
    ],
)
def test_internal_addresses_are_refused_after_resolution(address: str) -> None:
    (problem,) = check_resolved_addresses("https://llm.example.com/v1", [address], PLATFORM)
    assert "internal addresses" in problem


def test_one_internal_address_among_public_ones_is_enough_to_refuse() -> None:
    assert check_resolved_addresses("https://x/v1", ["8.8.8.8", "10.1.2.3"], PLATFORM)
    assert check_resolved_addresses("https://x/v1", ["8.8.8.8", "2606:4700::1111"], PLATFORM) == []
    assert check_resolved_addresses("https://x/v1", [], PLATFORM)


def test_ip_literals_in_the_url_are_checked_before_any_request() -> None:
    policy = Policy(openai_base_urls=("https://169.254.169.254/latest", "https://10.0.0.1/v1"))
    for url in ("https://169.254.169.254/latest", "https://10.0.0.1/v1"):
        (problem,) = check_openai_base_url(url, policy, default_url=DEFAULT)
        assert "address" in problem


def test_the_platform_may_allow_an_internal_network_and_block_public_cluster_ranges() -> None:
    policy = Policy(openai_allowed_networks=("10.8.0.0/16",), blocked_networks=("34.118.0.0/16",))
    assert check_resolved_addresses("https://x/v1", ["10.8.1.2"], policy) == []
    assert check_resolved_addresses("https://x/v1", ["10.9.1.2"], policy)
    (problem,) = check_resolved_addresses("https://x/v1", ["34.118.3.4"], policy)
    assert "cluster address" in problem


def test_bad_policy_values_are_refused_when_the_policy_is_made() -> None:
    with pytest.raises(ValueError):
        Policy(openai_allowed_networks=("not-a-network",))
    with pytest.raises(ValueError):
        Policy(max_redis_storage="a lot")
    with pytest.raises(ValueError):
        TierBounds(max={"memory": "lots"})
