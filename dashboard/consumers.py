"""The dashboard websocket: pushes, never writes."""

from __future__ import annotations

from channels.generic.websocket import AsyncJsonWebsocketConsumer

GROUP = "mq-dashboard"


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_staff:
            await self.close(code=4403)
            return
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def dashboard_message(self, message: dict) -> None:
        await self.send_json(message["data"])
