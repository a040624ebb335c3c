import pytest

from pgjit.core.permissions import (PermissionError_, PermissionRule, PermissionRules,
                                    normalize_privilege, resolve_table_privileges, schemas_of,
                                    summarize)


def rule(schema, name, privs, deny=False, kind="table"):
    return PermissionRule.build(kind, schema, name, privs, deny=deny)


TABLES = [("public", "orders"), ("public", "secret_keys"), ("sales", "Invoices"),
          ("pg_catalog", "pg_class"), ("information_schema", "tables")]


def test_allow_matches_globs_and_skips_system_schemas():
    rules = PermissionRules(allow=(rule("*", "*", ["select"]),))
    grants = resolve_table_privileges(TABLES, rules)
    assert set(grants) == {("public", "orders"), ("public", "secret_keys"), ("sales", "Invoices")}


def test_deny_star_clears_everything():
    rules = PermissionRules(allow=(rule("public", "*", ["SELECT", "INSERT"]),),
                            deny=(rule("public", "secret_*", ["*"], deny=True),))
    grants = resolve_table_privileges(TABLES, rules)
    assert grants == {("public", "orders"): frozenset({"SELECT", "INSERT"})}


def test_deny_removes_listed_privileges_case_and_space_insensitively():
    rules = PermissionRules(allow=(rule("public", "orders", ["SELECT", " insert "]),),
                            deny=(rule("public", "orders", ["Insert"], deny=True),))
    assert resolve_table_privileges(TABLES, rules) == {("public", "orders"): frozenset({"SELECT"})}


def test_names_are_case_sensitive_like_postgres():
    rules = PermissionRules(allow=(rule("sales", "invoices", ["SELECT"]),))
    assert resolve_table_privileges(TABLES, rules) == {}


@pytest.mark.parametrize("bad", ["SELEC", "SELECT, UPDATE", "ALL", "", "USAGE"])
def test_unknown_privileges_are_errors(bad):
    with pytest.raises(PermissionError_, match="unrecognized"):
        normalize_privilege(bad, allow_all=False)


def test_star_only_in_deny():
    assert normalize_privilege("*", allow_all=True) == "*"
    with pytest.raises(PermissionError_):
        normalize_privilege("*", allow_all=False)


def test_other_object_kinds_are_ignored():
    rules = PermissionRules(allow=(rule("*", "*", ["SELECT"], kind="view"),))
    assert resolve_table_privileges(TABLES, rules) == {}


def test_empty_rules_are_falsy_and_grant_nothing():
    assert not PermissionRules()
    assert resolve_table_privileges(TABLES, PermissionRules()) == {}


def test_summary_and_schemas():
    grants = {("a", "t1"): frozenset({"SELECT"}), ("b", "t2"): frozenset({"SELECT", "INSERT"})}
    assert summarize(grants) == "SELECT on 2 tables, INSERT on 1 table"
    assert schemas_of(grants) == {"a", "b"}
    assert summarize({}) == "no object privileges"
