"""Names and labels of the sessions the command line creates. Pure.

A session gets ``metadata.generateName`` made from the user and the Database, so that
``kubectl get dbsession`` shows whose session it is at a glance, while the API server's random
suffix keeps two sessions of one person apart.
"""

from __future__ import annotations

import re

from ..api.session import SECRET_NAME_SUFFIX

#: Marks sessions created by this command line; ``pgjit disconnect --all`` only touches these.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_CLI = "pgjit-cli"

#: The API server appends 5 random characters to generateName.
_GENERATED_SUFFIX_LENGTH = 5
#: The default Secret name, ``<session name>-credentials``, must fit a 63-character label-safe
#: name (the CRD enforces it), so the session name may have at most 51 characters.
_MAX_SESSION_NAME = 63 - len(SECRET_NAME_SUFFIX)
MAX_PREFIX_LENGTH = _MAX_SESSION_NAME - _GENERATED_SUFFIX_LENGTH
#: Share of the prefix the user part may take when both parts are long, so the Database part
#: always stays readable.
_USER_PART_MAX = 24


def slug(text: str) -> str:
    """``text`` reduced to lowercase letters, digits and single dashes (DNS-label characters).

    The domain of an e-mail-like user is dropped (``alice@example.com`` -> ``alice``): it is
    noise in a name and still visible in ``spec.user``.
    """
    local = text.split("@", 1)[0] if "@" in text.strip("@") else text
    # Service accounts: system:serviceaccount:NS:NAME -> the NAME part is what people know.
    local = local.rsplit(":", 1)[-1] or local
    return re.sub(r"[^a-z0-9]+", "-", local.lower()).strip("-")


def session_name_prefix(user: str, database: str) -> str:
    """The ``generateName`` of a session of ``user`` on ``database``: ``<user>-<database>-``.

    Always a valid prefix: at most MAX_PREFIX_LENGTH characters, starting with a letter or digit,
    ending with ``-``; parts that reduce to nothing become ``user``/``db``.
    """
    user_part = slug(user) or "user"
    db_part = slug(database) or "db"
    room = MAX_PREFIX_LENGTH - 2  # two dashes
    if len(user_part) + len(db_part) > room:
        user_part = user_part[: max(_USER_PART_MAX, room - len(db_part))].rstrip("-")
        db_part = db_part[: room - len(user_part)].rstrip("-")
    return f"{user_part}-{db_part}-"


def cli_labels() -> dict[str, str]:
    """Labels of every session the command line creates."""
    return {MANAGED_BY_LABEL: MANAGED_BY_CLI}
