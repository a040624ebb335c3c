"""The example objects of the API contract (shared/spec/api.md), as manifests.

Kept in the package so tests, documentation and the local dev stack use the same objects the
contract shows. They are transcribed as written there, with one change: the contract's Database
example lists both admin credentials to show the two choices ("exactly one of the two"), so here
the admin uses the password and the client certificate variant is ``DATABASE_CERT_ADMIN``.
"""

from __future__ import annotations

from typing import Any

import yaml

DATABASE = """\
apiVersion: pgjit.dev/v1alpha1
kind: Database
metadata:
  name: orders
  labels: {env: prod, team: payments}
spec:
  host: orders-pg.data.svc
  port: 5432
  adminDatabase: postgres
  databases: ["orders", "reporting"]
  admin:
    username: pgjit-admin
    passwordSecretRef: {name: orders-admin, key: password}
  tls:
    sslMode: verify-full
    caSecretRef: {name: orders-ca, key: ca.crt}
  managedRole: pgjit-auto-user
  credentials:
    type: password
    scramIterations: 4096
    clientCASecretRef: {name: orders-client-ca}
  suspended: false
  terminateConnections: true
"""

DATABASE_CERT_ADMIN = """\
apiVersion: pgjit.dev/v1alpha1
kind: Database
metadata:
  name: orders-cert
spec:
  host: orders-pg.data.svc
  admin:
    username: pgjit-admin
    clientCertificateSecretRef: {name: orders-admin-tls}
  tls:
    sslMode: verify-full
    caSecretRef: {name: orders-ca, key: ca.crt}
  credentials:
    type: clientCertificate
    clientCASecretRef: {name: orders-client-ca}
"""

ROLE = """\
apiVersion: pgjit.dev/v1alpha1
kind: Role
metadata: {name: analysts}
spec:
  subjects:
  - {kind: User, name: alice@example.com}
  - {kind: Group, name: analysts}
  userProvisioning: keep
  maxSessionDuration: 8h
  allow:
    databaseSelector:
      matchLabels: {env: prod}
    databaseNames: ["orders", "report*"]
    databaseRoles:
    - reader
    - "{{internal.db_roles}}"
    - "{{external.db_roles}}"
    permissions:
    - match: {objectKind: table, schema: public, name: "*"}
      privileges: [SELECT]
  deny:
    databaseSelector: {matchLabels: {tier: pii}}
    databaseRoles: [writer]
    permissions:
    - match: {objectKind: table, schema: public, name: "secret_*"}
      privileges: ["*"]
"""

DATABASE_SESSION = """\
apiVersion: pgjit.dev/v1alpha1
kind: DatabaseSession
metadata: {generateName: alice-orders-}
spec:
  user: alice@example.com
  groups: [analysts]
  extra: {db_roles: [reporting]}
  databaseRef: {name: orders}
  databaseName: orders
  databaseRoles: [reader]
  duration: 1h
  secretName: alice-orders-creds
"""

OBJECT_LABEL_RULE = """\
apiVersion: pgjit.dev/v1alpha1
kind: ObjectLabelRule
metadata: {name: pii}
spec:
  databaseSelector: {matchLabels: {team: payments}}
  rules:
  - match: {objectKind: table, schema: public, name: "orders*"}
    labels: {pii: "false"}
  - match: {objectKind: table, schema: public, name: "customer_*"}
    labels: {pii: "true"}
"""

ALL = {
    "Database": DATABASE,
    "ObjectLabelRule": OBJECT_LABEL_RULE,
    "Database/clientCertificate": DATABASE_CERT_ADMIN,
    "Role": ROLE,
    "DatabaseSession": DATABASE_SESSION,
}


def manifest(name: str) -> dict[str, Any]:
    """A fresh copy of the example ``name`` (a key of ``ALL``) as a dict."""
    loaded: dict[str, Any] = yaml.safe_load(ALL[name])
    return loaded
