"""The documentation stays true to the code.

Docs rot silently: a renamed condition reason, a reworded message, a new environment variable or
a changed field leaves a page that reads well and is wrong. These tests tie each such fact in
``docs/`` (and the README's links) to its source:

1. every relative link resolves to a file (and, between pgjit's own doc pages, to a heading);
2. every condition reason and message fragment quoted in troubleshooting.md exists in
   ``operator/pgjit``, and every reason the operator can set is listed there;
3. every troubleshooting entry of the seed (Teleport's guide the project started from) is
   covered, quoted verbatim;
4. every pgjit object in a YAML block validates against the models and names no field the CRD
   schema lacks;
5. every ``PGJIT_*`` variable the docs mention exists in the code, and every one the operator
   reads is documented in operations.md;
6. the quick start's session is one the ``make dev`` stack's Role allows;
7. admin-setup.md shows every statement the operator's preflight tells a DBA to run.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgjit.api import Database, DatabaseSession, Role, SessionPhase
from pgjit.api.labels import ObjectLabelRule
from pgjit.api.review import DatabaseSessionReview
from pgjit.api.crd import build_crds
from pgjit.core import policy
from pgjit.devstack import stack
from pgjit.engine.preflight import run_preflight
from pgjit import settings as operator_settings
from pgjit.vocabulary import Reason

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
SOURCE = REPO / "operator" / "pgjit"
README = REPO / "README.md"
# The seed lives next to the repository in the project's shared folder, not in it.
SEED = REPO.parent / "shared" / "seed" / "postgres-automatic-user-provisioning.txt"

#: The user guide's core pages, which link to each other's sections: those links must also hit
#: an existing heading (elsewhere a file is enough).
GUIDE_PAGES = ("index.md", "concepts.md", "quickstart.md", "admin-setup.md", "roles.md",
               "troubleshooting.md", "operations.md", "access-requests.md")

MODELS = {"Database": Database, "Role": Role, "DatabaseSession": DatabaseSession,
          "ObjectLabelRule": ObjectLabelRule, "DatabaseSessionReview": DatabaseSessionReview}
CRD_SCHEMAS = {crd["spec"]["names"]["kind"]: crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
               for crd in build_crds()}


def doc_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Markdown helpers

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


def fences(text: str) -> Iterator[tuple[str, str]]:
    """(info string, body) of every fenced code block."""
    for match in _FENCE.finditer(text):
        yield match.group(1).strip(), match.group(2)


def prose(text: str) -> str:
    """The text without code blocks and inline code, where links are links."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = _INLINE_CODE.sub(lambda m: m.group(0).strip("`"), heading).lower()
    kept = "".join(ch for ch in text
                   if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


# --------------------------------------------------------------------------------------------
# Source helpers


def source_files() -> list[Path]:
    return sorted(SOURCE.rglob("*.py"))


def _string_pieces(tree: ast.AST) -> Iterator[str]:
    """Every literal piece of text: plain strings and the constant parts of f-strings (Python
    has already joined implicitly concatenated literals)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


SOURCE_TREES = {path: ast.parse(read(path)) for path in source_files()}
SOURCE_STRINGS = [piece for tree in SOURCE_TREES.values() for piece in _string_pieces(tree)]
# One string with every literal piece stripped and delimited, so that "a suffix of one piece
# followed by a prefix of another" is two substring searches.
_CORPUS = "\x00" + "\x00".join(piece.strip() for piece in SOURCE_STRINGS) + "\x00"


def in_source(fragment: str) -> bool:
    """Whether ``fragment`` is in one literal piece, or is where two pieces meet: messages are
    often put together from parts (``f"no Role allows {_who(request)}"`` + ``"user …"``)."""
    if fragment in _CORPUS:
        return True
    for cut in range(1, len(fragment)):
        if fragment[cut - 1].isalnum() and fragment[cut].isalnum():
            continue  # pieces meet at a space or punctuation, not inside a word
        left, right = fragment[:cut].strip(), fragment[cut:].strip()
        if left and right and left + "\x00" in _CORPUS and "\x00" + right in _CORPUS:
            return True
    return False


def reasons_in_code() -> set[str]:
    """Every reason the operator can put on a condition or an Event: the members of
    ``pgjit.vocabulary.Reason``, since no code spells a reason any other way
    (tests/unit/test_vocabulary.py). ``Allowed`` is a policy verdict, never a condition's."""
    return {reason.value for reason in Reason} - {Reason.ALLOWED}


def test_reason_collector_sees_the_reasons_tests_rely_on():
    # Guards the collector itself: if a refactoring hid reasons from it, the completeness check
    # below would pass vacuously.
    found = reasons_in_code()
    for reason in ("UserConflict", "RolesChanged", "MissingDatabaseRole", "InsufficientPrivilege",
                   "DatabaseNotReady", "ReadOnly", "AccessDenied", "ProvisioningDisabled",
                   "Connected", "Suspended", "Active", "Expired", "InvalidRole", "EndFailed",
                   "AccessRevoked", "Conflict", "UnexpectedDatabaseError"):
        assert reason in found, reason


# --------------------------------------------------------------------------------------------
# 1. Links


def _link_targets(path: Path) -> Iterator[str]:
    for target in _LINK.findall(prose(read(path))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        yield target


@pytest.mark.parametrize("path", [README, *doc_pages()], ids=lambda p: p.name)
def test_relative_links_resolve(path: Path):
    broken = []
    for target in _link_targets(path):
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"{target}: no such file")
            continue
        checks_anchor = (anchor and path.parent == DOCS and path.name in GUIDE_PAGES
                         and destination.parent == DOCS and destination.name in GUIDE_PAGES)
        if checks_anchor and anchor not in anchors(read(destination)):
            broken.append(f"{target}: no heading with anchor #{anchor} in {destination.name}")
    assert not broken, f"{path.name}: " + "; ".join(broken)


def test_the_slug_rules_match_github():
    assert slug("Amazon RDS Blue/Green deployment enters \"replication degraded\"") == \
        "amazon-rds-bluegreen-deployment-enters-replication-degraded"
    assert slug("Unreachable, AuthenticationFailed, SecretNotFound") == \
        "unreachable-authenticationfailed-secretnotfound"
    assert slug("Permission denied to grant role \"rds_iam\"") == \
        "permission-denied-to-grant-role-rds_iam"


# --------------------------------------------------------------------------------------------
# 2. Troubleshooting quotes the operator


TROUBLESHOOTING = DOCS / "troubleshooting.md"
_PLACEHOLDER = re.compile(r"\"?<[^<>]+>\"?|…")
_COMPOSITION_BOUNDARY = re.compile(r"; |: |\. | \(")
_EDGE_PUNCTUATION = " \t\"'()[],.;:"


def status_blocks() -> list[dict[str, Any]]:
    """The ``pgjit-status`` blocks: header fields and message lines."""
    blocks = []
    for info, body in fences(read(TROUBLESHOOTING)):
        if info != "pgjit-status":
            continue
        lines = body.strip().splitlines()
        kind, *pairs = lines[0].split()
        fields = dict(pair.split("=", 1) for pair in pairs)
        messages = [line.removeprefix("message:").strip() for line in lines[1:]]
        assert all(line.startswith("message: ") for line in lines[1:]), body
        blocks.append({"kind": kind, "fields": fields, "messages": messages, "body": body})
    return blocks


def message_fragments(message: str) -> list[str]:
    """The literal parts of a quoted message: placeholders removed, and split where pgjit
    composes a message from parts (``; ``, ``: ``, ``. ``), so each part is one source literal."""
    fragments = []
    for piece in _PLACEHOLDER.split(message):
        for part in _COMPOSITION_BOUNDARY.split(piece):
            part = part.strip(_EDGE_PUNCTUATION)
            if len(part) >= 3:
                fragments.append(part)
    return fragments


def test_status_blocks_quote_known_reasons_and_phases():
    blocks = status_blocks()
    assert len(blocks) >= 30, "troubleshooting.md lost most of its status examples"
    known = reasons_in_code()
    problems = []
    for block in blocks:
        fields = block["fields"]
        if block["kind"] not in {"Database", "Role", "DatabaseSession", "Event"}:
            problems.append(f"unknown kind {block['kind']!r}")
        if fields.get("reason") not in known:
            problems.append(f"reason {fields.get('reason')!r} is set nowhere in operator/pgjit")
        if "phase" in fields and fields["phase"] not in {p.value for p in SessionPhase}:
            problems.append(f"unknown phase {fields['phase']!r}")
        if not block["messages"]:
            problems.append(f"no message in block {block['body']!r}")
    assert not problems, problems


def test_quoted_messages_exist_in_the_source():
    missing = []
    for block in status_blocks():
        for message in block["messages"]:
            for fragment in message_fragments(message):
                if not in_source(fragment):
                    missing.append(f"{block['fields'].get('reason')}: {fragment!r}")
    assert not missing, "not found in operator/pgjit: " + "; ".join(missing)


def test_the_message_check_can_fail():
    assert message_fragments('the admin "<a>" cannot grant "<r>"; run as a superuser: GRANT') == [
        "the admin", "cannot grant", "run as a superuser", "GRANT"]
    assert in_source("the admin cannot terminate connections of ended users")
    assert in_source("no Role allows user")  # two pieces: "no Role allows " + "user "
    assert not in_source("the admin cannot grand")
    assert not in_source("no Role permits user")


def test_every_reason_the_operator_sets_is_in_the_reason_index():
    index = {}
    for line in read(TROUBLESHOOTING).splitlines():
        match = re.match(r"^\| `([A-Za-z]+)` \|", line)
        if match:
            index[match.group(1)] = line
    missing = sorted(reasons_in_code() - set(index))
    assert not missing, f"reasons missing from the index in troubleshooting.md: {missing}"
    # Allowed is the policy's verdict that pgjit explain prints; the operator reports Active.
    unknown = sorted(set(index) - reasons_in_code() - {Reason.ALLOWED})
    assert not unknown, f"the index lists reasons the operator never sets: {unknown}"



# --------------------------------------------------------------------------------------------
# 3. The seed's troubleshooting entries


#: The headings of the seed's troubleshooting section ("문제 해결", up to "다음 단계"), in its
#: order. The seed (shared/seed/postgres-automatic-user-provisioning.txt, Teleport's guide saved as
#: text) lives outside the repository, and a clean clone must test the same, so the headings are
#: kept here; test_seed_headings_match_the_seed re-reads them when the seed is next to the clone.
SEED_TROUBLESHOOTING_HEADINGS = (
    "사용자가 CONNECT 권한을 가지고 있지 않음 오류",
    "읽기 전용 트랜잭션에서 실행할 수 없음 오류",
    "스키마가 선택되지 않음 오류",
    '"rds_iam" 역할 부여 권한 거부',
    "매핑된 원격 사용자 이름 오류 사용",
    "Unable to cancel a query",
    "SSL SYSCALL error",
    'Amazon RDS Blue/Green 배포가 "복제 저하" 상태로 진입',
)


def seed_troubleshooting_headings(seed_text: str) -> list[str]:
    """Headings of the seed's troubleshooting section ("문제 해결", up to "다음 단계").

    The seed is a web page saved as text: headings end with the page's "#" permalink marker.
    It holds the page twice; the first copy counts.
    """
    lines = [line.strip() for line in seed_text.splitlines()]
    start = lines.index("문제 해결#")
    end = lines.index("다음 단계#", start)
    return [line.removesuffix("#") for line in lines[start + 1:end]
            if line.endswith("#") and len(line) > 1]


def test_seed_headings_match_the_seed():
    """Where the project's shared folder sits next to the repository (the developers'
    machines), the kept headings must still be the seed's; a clean clone elsewhere has no
    seed to compare with and relies on the list above."""
    if SEED.exists():
        assert seed_troubleshooting_headings(read(SEED)) == list(SEED_TROUBLESHOOTING_HEADINGS)
    assert len(SEED_TROUBLESHOOTING_HEADINGS) == 8


def test_every_seed_troubleshooting_entry_is_covered():
    text = read(TROUBLESHOOTING)
    page_anchors = anchors(text)
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells:
            rows[cells[0]] = line
    problems = []
    for heading in SEED_TROUBLESHOOTING_HEADINGS:
        row = rows.get(heading)
        if row is None:
            problems.append(f"no table row starts with the seed heading {heading!r}")
            continue
        targets = [t for t in _LINK.findall(row) if t.startswith("#")]
        if not targets or any(t[1:] not in page_anchors for t in targets):
            problems.append(f"row for {heading!r} does not link to a section of the page")
    assert not problems, problems


# --------------------------------------------------------------------------------------------
# 4. Example objects


_HEREDOC = re.compile(r"<<'?YAML'?[^\n]*\n(.*?)^YAML$", re.MULTILINE | re.DOTALL)


def example_objects() -> list[tuple[str, int, dict[str, Any]]]:
    """(page, block number, object) for every pgjit object in a YAML block (or a kubectl
    heredoc) of any page in docs/."""
    found = []
    for path in doc_pages():
        name = path.name
        for number, (info, body) in enumerate(fences(read(path))):
            if info in ("yaml", "yml"):
                sources = [body]
            elif info in ("sh", "console", "bash"):
                sources = _HEREDOC.findall(body)  # kubectl create -f - <<'YAML' … YAML
            else:
                continue
            for document in (d for source in sources for d in yaml.safe_load_all(source)):
                if isinstance(document, dict) and str(
                        document.get("apiVersion", "")).startswith("pgjit.dev/"):
                    found.append((name, number, document))
    return found


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """Fields of ``value`` the structural schema does not declare (the API server would prune
    them, and pydantic ignores them, so only this catches a misspelt field)."""
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            if properties is not None and key in properties:
                yield from unknown_fields(sub, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                yield from unknown_fields(sub, extra, f"{path}.{key}")
            elif properties is not None or extra is False:
                yield f"{path}.{key}"
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from unknown_fields(item, schema["items"], f"{path}[{index}]")


def test_docs_have_examples_of_every_kind():
    kinds = {obj["kind"] for _, _, obj in example_objects()}
    assert kinds == set(MODELS), kinds


@pytest.mark.parametrize("page,number,obj", example_objects(),
                         ids=[f"{page}-block{number}-{obj.get('kind')}"
                              for page, number, obj in example_objects()])
def test_example_objects_validate(page: str, number: int, obj: dict[str, Any]):
    kind = obj.get("kind")
    assert kind in MODELS, f"{page} block {number}: unknown kind {kind!r}"
    MODELS[kind].model_validate(obj)
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    unknown = list(unknown_fields(body, CRD_SCHEMAS[kind]))
    assert not unknown, f"{page} block {number}: {kind} fields not in the CRD: {unknown}"


def test_the_unknown_field_check_can_fail():
    session = {"spec": {"user": "a", "databaseRef": {"name": "x"}, "databaseName": "x",
                        "databaseRole": ["reader"]}}
    assert list(unknown_fields(session, CRD_SCHEMAS["DatabaseSession"])) == [".spec.databaseRole"]


# --------------------------------------------------------------------------------------------
# 5. Environment variables

_ENV = re.compile(r"PGJIT_[A-Z0-9_]*[A-Z0-9]")


def _code_env_patterns() -> list[re.Pattern[str]]:
    """Every PGJIT_ name in the code; f-string names such as PGJIT_PG{major}_BINDIR become
    patterns."""
    roots = [REPO / "operator", REPO / "tests", REPO / "charts", REPO / "Makefile"]
    texts = []
    for root in roots:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()
                                               and p.suffix in (".py", ".yaml", ".yml", ".tpl",
                                                                ".json", ".sh", "")]
        texts += [p.read_text(encoding="utf-8", errors="ignore") for p in files
                  if p.resolve() != Path(__file__).resolve()]
    names = set()
    for text in texts:
        names.update(re.findall(r"PGJIT_[A-Za-z0-9_{}]*[A-Za-z0-9}]", text))
    return [re.compile(re.sub(r"\\\{[^}]*\\\}", "[A-Z0-9]+", re.escape(name)) + "$")
            for name in names]


def runtime_env_vars() -> set[str]:
    """The PGJIT_ variables the operator reads: one per field of pgjit.settings.Settings, the
    only place that reads them."""
    return {setting.variable for setting in operator_settings.fields()
            if setting.variable.startswith("PGJIT_")}


def _documented_default(default: object) -> str:
    if default is None or default is False:
        return "unset"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def test_documented_env_vars_exist_in_the_code():
    patterns = _code_env_patterns()
    unknown = {}
    for path in [README, *doc_pages()]:
        for name in set(_ENV.findall(read(path))):
            if not any(p.match(name) for p in patterns):
                unknown.setdefault(path.name, []).append(name)
    assert not unknown, f"PGJIT_ variables in docs that no code reads: {unknown}"


def test_operations_documents_every_runtime_env_var():
    runtime = runtime_env_vars()
    assert {"PGJIT_HEALTH_SECONDS", "PGJIT_THREADS"} <= runtime, runtime
    documented = set(_ENV.findall(read(DOCS / "operations.md")))
    assert runtime <= documented, f"missing from operations.md: {sorted(runtime - documented)}"


def test_operations_shows_each_settings_default():
    rows = dict(re.findall(r"^\| `(PGJIT_[A-Z0-9_]+)` \| `?([^|`]+?)`? \|",
                           read(DOCS / "operations.md"), re.MULTILINE))
    wrong = {setting.variable: (rows.get(setting.variable), _documented_default(setting.default))
             for setting in operator_settings.fields() if setting.variable.startswith("PGJIT_")
             and rows.get(setting.variable) != _documented_default(setting.default)}
    assert not wrong, f"operations.md's Settings table (shown, actual): {wrong}"


# --------------------------------------------------------------------------------------------
# 6. The quick start works against the dev stack


class _DevServer:
    """What ``stack._example_objects`` reads from a running server; no server needed."""

    host, port, admin_user, admin_password = "127.0.0.1", 5432, "pgjit_admin", "unused"


def test_quickstart_session_is_allowed_by_the_dev_stack():
    text = read(DOCS / "quickstart.md")
    demo_blocks = [body for _, body in fences(text) if f"-n {stack.NAMESPACE} create" in body]
    sessions = [obj for body in demo_blocks for source in _HEREDOC.findall(body)
                for obj in yaml.safe_load_all(source) if obj.get("kind") == "DatabaseSession"]
    assert sessions, "quickstart.md shows no DatabaseSession for the dev stack"
    objects = {obj["kind"]: obj for obj in stack._example_objects(_DevServer())
               if obj["apiVersion"].startswith("pgjit.dev/")}
    database = Database.model_validate(objects["Database"])
    roles = [Role.model_validate(objects["Role"])]
    for manifest in sessions:
        session = DatabaseSession.model_validate(manifest)
        decision = policy.evaluate(session.spec, database, roles)
        assert decision.allowed, decision.message
        assert session.spec.database_ref.name == database.metadata.name
        assert session.credentials_secret_name in text


# --------------------------------------------------------------------------------------------
# 7. The admin setup gives exactly the statements preflight asks for


class _Cursor:
    def __init__(self, rows: list[tuple]):
        self._rows = rows

    async def fetchone(self) -> tuple:
        return self._rows[0]

    async def fetchall(self) -> list[tuple]:
        return self._rows


class _ServerLackingEverything:
    """Answers preflight's three queries as a PostgreSQL 16 server on which the admin has none of
    the privileges pgjit checks, so that preflight produces every fix it knows."""

    def __init__(self) -> None:
        self._answers = iter([
            # version, version_num, in_recovery, read_only, superuser, createrole,
            # managed role exists, admin option on it, may signal backends
            [("16.4", 160004, False, False, False, False, True, False, False)],
            [("orders", True, False)],    # database exists, no CONNECT
            [("reader", True, False)],    # role exists, no ADMIN OPTION
        ])

    @contextlib.asynccontextmanager
    async def pipeline(self):
        yield

    async def execute(self, query, params=None) -> _Cursor:
        return _Cursor(next(self._answers))


def _statement(text: str) -> str:
    """A statement compared loosely: quotes, case and spacing do not matter."""
    return " ".join(text.replace('"', "").lower().split())


def test_admin_setup_shows_every_statement_preflight_asks_for():
    result = asyncio.run(run_preflight(
        _ServerLackingEverything(), admin_user="pgjit-admin", managed_role="pgjit-auto-user",
        databases=("orders",), roles=("reader",), terminate_connections=True))
    fixes = [shortfall.fix for shortfall in result.shortfalls + result.role_shortfalls]
    assert len(fixes) == 5, fixes
    page = " ".join(_statement(body) for _, body in fences(read(DOCS / "admin-setup.md")))
    page += " " + " ".join(_statement(code.strip("`"))
                           for code in _INLINE_CODE.findall(read(DOCS / "admin-setup.md")))
    missing = [fix for fix in fixes if _statement(fix) not in page]
    assert not missing, f"admin-setup.md does not show: {missing}"


# --------------------------------------------------------------------------------------------
# 8. Metric names

_METRIC = re.compile(r"\b(?:controller_runtime|pgjit)_[a-z_]+[a-z]\b")


def _callee(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def metrics_in_code() -> set[str]:
    """Names passed to prometheus_client's Counter, Gauge and Histogram in the operator."""
    names = set()
    for tree in SOURCE_TREES.values():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and _callee(node) in ("Counter", "Gauge", "Histogram")
                    and node.args and isinstance(node.args[0], ast.Constant)):
                names.add(node.args[0].value)
    return names


def test_operations_lists_exactly_the_metrics_the_operator_serves():
    served = metrics_in_code()
    assert "pgjit_active_sessions" in served, served
    documented = {name.removesuffix("_bucket")
                  for name in _METRIC.findall(read(DOCS / "operations.md"))}
    assert documented == served, (f"documented only: {sorted(documented - served)}; "
                                  f"served only: {sorted(served - documented)}")
