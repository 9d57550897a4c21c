"""Webhooks and notifications (controlplane/hooks/).

GET    /v1/webhooks                          the caller's webhooks
POST   /v1/webhooks                          {url, events, description, active} -> with its secret
GET    /v1/webhooks/{id}
PATCH  /v1/webhooks/{id}                     {url, events, description, active}
DELETE /v1/webhooks/{id}
GET    /v1/webhooks/{id}/deliveries          each delivery with every attempt, newest first
GET    /v1/notifications?unread=true|false   newest first, with the unread count
POST   /v1/notifications/{id}/read           and /unread
POST   /v1/notifications/read-all
DELETE /v1/notifications/{id}
"""

from __future__ import annotations

from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from controlplane.api.envelope import success
from controlplane.api.identity import current_user_id
from controlplane.api.schemas import iso, pagination_json, parse_page
from controlplane.api.wire import json_response, read_json_body
from controlplane.errors import BadRequest
from controlplane.events import EVENT_TYPES
from controlplane.hooks.notifications import Notifications
from controlplane.hooks.store import Attempt, Delivery, Notification, Webhook
from controlplane.hooks.webhooks import Webhooks, parse_hook


def webhook_json(hook: Webhook, *, with_secret: bool = False) -> dict[str, Any]:
    data = {
        "webhook_id": hook.id,
        "url": hook.url,
        "events": hook.events or list(EVENT_TYPES),
        "all_events": not hook.events,
        "description": hook.description,
        "active": hook.active,
        "created_at": iso(hook.created_at),
        "updated_at": iso(hook.updated_at),
    }
    if with_secret:
        data["secret"] = hook.secret
    return data


def delivery_json(delivery: Delivery, attempts: list[Attempt]) -> dict[str, Any]:
    return {
        "delivery_id": delivery.id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "status": delivery.status,
        "attempts": [
            {"attempt": a.attempt, "at": iso(a.at), "status_code": a.status_code, "error": a.error, "ms": a.ms}
            for a in attempts
        ],
        "next_attempt_at": iso(delivery.next_attempt_at),
        "created_at": iso(delivery.created_at),
    }


def notification_json(note: Notification) -> dict[str, Any]:
    return {
        "notification_id": note.id,
        "type": note.type,
        "subject_id": note.subject_id,
        "message": note.message,
        "data": note.data,
        "read": note.read_at is not None,
        "created_at": iso(note.created_at),
        "read_at": iso(note.read_at),
    }


def _unread_filter(value: str | None) -> bool | None:
    if value in (None, ""):
        return None
    if value not in ("true", "false"):
        raise BadRequest("query parameter unread must be true or false", code="invalid_query")
    return value == "true"


def register(app: QuartTrio, *, webhooks: Webhooks, notifications: Notifications) -> None:
    @app.get("/v1/webhooks")
    async def list_webhooks() -> Response:
        hooks = webhooks.store.webhooks_of(current_user_id())
        return json_response(success({"webhooks": [webhook_json(h) for h in hooks]}))

    @app.post("/v1/webhooks")
    async def create_webhook() -> Response:
        hook = webhooks.create(current_user_id(), parse_hook(await read_json_body(), creating=True))
        message = "webhook created; verify deliveries with its secret (X-Scalebox-Signature)"
        return json_response(success(webhook_json(hook, with_secret=True), message), 201)

    @app.get("/v1/webhooks/<hook_id>")
    async def get_webhook(hook_id: str) -> Response:
        return json_response(success(webhook_json(webhooks.get(current_user_id(), hook_id))))

    @app.patch("/v1/webhooks/<hook_id>")
    async def update_webhook(hook_id: str) -> Response:
        fields = parse_hook(await read_json_body(), creating=False)
        return json_response(success(webhook_json(webhooks.update(current_user_id(), hook_id, fields))))

    @app.delete("/v1/webhooks/<hook_id>")
    async def delete_webhook(hook_id: str) -> Response:
        hook = webhooks.delete(current_user_id(), hook_id)
        return json_response(success({"webhook_id": hook.id}, "webhook deleted"))

    @app.get("/v1/webhooks/<hook_id>/deliveries")
    async def list_deliveries(hook_id: str) -> Response:
        hook = webhooks.get(current_user_id(), hook_id)
        page = parse_page(request.args.to_dict())
        deliveries, total = webhooks.store.deliveries_of(hook.id, page.limit, page.offset)
        attempts = webhooks.store.attempts_of([d.id for d in deliveries])
        data = {
            "deliveries": [delivery_json(d, attempts[d.id]) for d in deliveries],
            "pagination": pagination_json(page, total),
        }
        return json_response(success(data))

    @app.get("/v1/notifications")
    async def list_notifications() -> Response:
        args = request.args.to_dict()
        page = parse_page(args)
        notes, total, unread = notifications.store.notifications_of(
            current_user_id(), unread=_unread_filter(args.get("unread")), limit=page.limit, offset=page.offset
        )
        data = {
            "notifications": [notification_json(n) for n in notes],
            "unread": unread,
            "pagination": pagination_json(page, total),
        }
        return json_response(success(data))

    @app.post("/v1/notifications/read-all")
    async def read_all() -> Response:
        count = notifications.mark_all_read(current_user_id())
        return json_response(success({"marked": count}))

    @app.post("/v1/notifications/<note_id>/read")
    async def read(note_id: str) -> Response:
        return json_response(success(notification_json(notifications.mark(current_user_id(), note_id, read=True))))

    @app.post("/v1/notifications/<note_id>/unread")
    async def unread(note_id: str) -> Response:
        return json_response(success(notification_json(notifications.mark(current_user_id(), note_id, read=False))))

    @app.delete("/v1/notifications/<note_id>")
    async def delete_notification(note_id: str) -> Response:
        notifications.delete(current_user_id(), note_id)
        return json_response(success({"notification_id": note_id}, "notification deleted"))
