"""Live pushes: Socket.IO rooms (:mod:`.rooms`), the server (:mod:`.hub`), the Kafka reader
(:mod:`.consumer`)."""

from monitoring_api.live.consumer import LiveConsumer, ensure_topics
from monitoring_api.live.hub import SOCKETIO_PATH, LiveHub, SocketIOMount, socketio_server

__all__ = [
    "SOCKETIO_PATH",
    "LiveConsumer",
    "LiveHub",
    "SocketIOMount",
    "ensure_topics",
    "socketio_server",
]
