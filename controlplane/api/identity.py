"""Who is asking: the user behind the request's API key, for ownership checks.

Set by the app's authentication hook for every request that carries an API key;
routes reach it through `current_user_id()`, never through the key itself.
"""

from __future__ import annotations

from quart import g


def current_user_id() -> str:
    """The id of the user whose API key authenticated this request (usr-...)."""
    user_id = g.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        raise RuntimeError("current_user_id() outside an API-key request")
    return user_id
